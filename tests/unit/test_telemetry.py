"""Trace context in and out (services/common/observability/telemetry.py), without a broker.

Incoming ``traceparent`` / ``tracestate`` values are untrusted: only what
the W3C format allows becomes a parent. Units of work get one span each,
the outbox stores its traceparent, and publish spans hand it on.
"""
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.common.observability import telemetry
from services.common.observability.logs import ServiceJsonFormatter
from tests.support.telemetry_spans import hex_ids, memory_exporter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = "00-{}-{}-01".format(TRACE_ID, SPAN_ID)


@pytest.fixture
def spans():
    return memory_exporter()


def parent_of(headers):
    return trace.get_current_span(telemetry.extract(headers)).get_span_context()


def test_a_valid_traceparent_is_the_parent():
    context = parent_of({"traceparent": VALID, "tracestate": "vendor=value"})
    assert context.is_valid and context.is_remote
    assert format(context.trace_id, "032x") == TRACE_ID and format(context.span_id, "016x") == SPAN_ID
    assert context.trace_state.get("vendor") == "value"


@pytest.mark.parametrize("bad", [
    None, 42, ["00-{}-{}-01".format(TRACE_ID, SPAN_ID)], "", "garbage", "00-not-a-trace-01",
    "00-{}-{}-01".format("0" * 32, SPAN_ID),  # all-zero trace id
    "00-{}-{}-01".format(TRACE_ID, "0" * 16),  # all-zero span id
    "ff-{}-{}-01".format(TRACE_ID, SPAN_ID),  # version ff is forbidden
    "00-{}-{}-01".format(TRACE_ID.upper(), SPAN_ID),
    VALID + "\r\nX-Forged: yes", VALID + "-" + "x" * 600,
])
def test_a_malformed_traceparent_is_no_parent(bad):
    assert not parent_of({"traceparent": bad, "tracestate": "vendor=value"}).is_valid


def test_an_oversized_tracestate_is_dropped_not_fatal():
    context = parent_of({"traceparent": VALID, "tracestate": "k=" + "v" * 5000})
    assert context.is_valid and len(context.trace_state) == 0


def test_inject_writes_the_current_span(spans):
    with trace.get_tracer("test").start_as_current_span("outer") as span:
        carrier = telemetry.inject()
    assert carrier["traceparent"].split("-")[1:3] == [format(span.get_span_context().trace_id, "032x"),
                                                       format(span.get_span_context().span_id, "016x")]
    assert telemetry.inject(trace.set_span_in_context(trace.INVALID_SPAN)) == {}


def test_one_span_per_unit_of_work_under_the_current_span(spans, tmp_path):
    engine = create_engine("sqlite:///{}".format(tmp_path / "uow.sqlite3"))
    with trace.get_tracer("test").start_as_current_span("entrypoint") as outer:
        with Session(engine) as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
            stored = telemetry.current_traceparent(session)
            session.commit()
        with Session(engine) as session:
            session.execute(text("SELECT x FROM t")).all()
    with Session(engine) as session:  # no span active: no unit-of-work span
        session.execute(text("SELECT x FROM t")).all()
    engine.dispose()

    units = [span for span in spans.get_finished_spans() if span.name == "unit of work"]
    assert len(units) == 2
    outer_ids = hex_ids(outer)
    for unit in units:
        trace_id, _, parent = hex_ids(unit)
        assert (trace_id, parent) == (outer_ids[0], outer_ids[1])
        assert unit.attributes["db.system"] == "sqlite"
    assert [unit.attributes["db.transaction.outcome"] for unit in units] == ["commit", "rollback"]
    # the outbox stores the unit of work's traceparent, not the entrypoint's
    assert stored.split("-")[:3] == ["00", outer_ids[0], hex_ids(units[0])[1]]


def test_publish_spans_continue_the_stored_trace(spans):
    publish = telemetry.PublishSpans([("e1", "order_created", "orders.events", VALID),
                                      ("e2", "order_created", "orders.events", None),
                                      ("e3", "order_created", "orders.events", "garbage"),
                                      ("e4", "order_created", "orders.events", VALID)])
    headers = publish.headers("e1")
    assert publish.headers("e2") == {} and publish.headers("e3") == {}
    publish.end(["e1"])

    finished = {span.attributes["messaging.message.id"]: span for span in spans.get_finished_spans()}
    assert set(finished) == {"e1", "e4"}
    trace_id, span_id, parent = hex_ids(finished["e1"])
    assert (trace_id, parent) == (TRACE_ID, SPAN_ID)
    assert headers == {"nameko.traceparent": "00-{}-{}-01".format(trace_id, span_id)}
    assert finished["e1"].kind == trace.SpanKind.PRODUCER
    assert finished["e1"].status.status_code == StatusCode.UNSET
    assert finished["e4"].status.status_code == StatusCode.ERROR  # not confirmed


def test_json_log_lines_carry_the_trace_id(spans):
    record = logging.LogRecord("orders", logging.INFO, __file__, 1, "placed", None, None)
    record.correlation_id = "req-1"
    with trace.get_tracer("test").start_as_current_span("entrypoint") as span:
        line = json.loads(ServiceJsonFormatter().format(record))
    assert (line["trace_id"], line["span_id"]) == hex_ids(span)[:2]


@pytest.fixture
def unexported_provider(monkeypatch):
    """The provider ``configure`` installs when no OTLP endpoint is configured."""
    for key in telemetry.ENDPOINT_KEYS + ("OTEL_TRACES_SAMPLER",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    installed = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    telemetry.configure("orders", {})
    [provider] = installed
    return provider


def test_with_no_endpoint_an_untraced_call_is_not_recorded_but_its_ids_travel(unexported_provider):
    span = unexported_provider.get_tracer("test").start_span("work", context=telemetry.extract({}))
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    version, trace_id, span_id, flags = telemetry.inject(trace.set_span_in_context(span))["traceparent"].split("-")
    assert (trace_id, span_id) == ("{:032x}".format(span.get_span_context().trace_id),
                                   "{:016x}".format(span.get_span_context().span_id))
    assert not int(flags, 16) & 1  # not sampled: the next service records nothing either


@pytest.mark.parametrize("flags, recorded", [("01", True), ("00", False)])
def test_with_no_endpoint_the_callers_sampling_decision_is_kept(unexported_provider, flags, recorded):
    parent = telemetry.extract({"traceparent": "00-{}-{}-{}".format(TRACE_ID, SPAN_ID, flags)})
    span = unexported_provider.get_tracer("test").start_span("work", context=parent)
    assert span.is_recording() is recorded
    assert format(span.get_span_context().trace_id, "032x") == TRACE_ID


def test_a_trace_not_recorded_gets_no_unit_of_work_span(spans, tmp_path):
    engine = create_engine("sqlite:///{}".format(tmp_path / "uow.sqlite3"))
    unsampled = trace.NonRecordingSpan(trace.SpanContext(
        int(TRACE_ID, 16), int(SPAN_ID, 16), is_remote=False, trace_flags=trace.TraceFlags(0)))
    with trace.use_span(unsampled):
        with Session(engine) as session:
            session.execute(text("SELECT 1")).all()
            stored = telemetry.current_traceparent(session)
    engine.dispose()
    assert spans.get_finished_spans() == ()
    assert stored == "00-{}-{}-00".format(TRACE_ID, SPAN_ID)  # the outbox row still carries the trace


def test_events_of_a_trace_not_recorded_carry_its_traceparent_without_a_span(spans):
    unsampled = "00-{}-{}-00".format(TRACE_ID, SPAN_ID)
    publish = telemetry.PublishSpans([("e1", "order_created", "orders.events", unsampled)])
    assert publish.headers("e1") == {"nameko.traceparent": unsampled}
    publish.end(["e1"])
    assert spans.get_finished_spans() == ()
