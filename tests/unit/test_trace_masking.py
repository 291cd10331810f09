"""Emails never reach logs or traces whole, and trace lines stay summaries."""
import io
import json
import logging
import os
from datetime import datetime
from types import SimpleNamespace

import eventlet
import pytest
from nameko.exceptions import RemoteError
from nameko.timer import timer
from nameko_tracer import constants
from sqlalchemy.exc import OperationalError

from services.common.observability.correlation import CorrelationId
from services.common.errors import NotFound
from services.common.http.front_door import JsonHttpHandler
from services.common.settings import load_config

from services.common.observability.masking import MaskEmails, mask, mask_text
from services.common.observability.tracing import (
    HttpTraceAdapter, TraceAdapter, TraceFilter, TraceFormatter, Tracer, service_name_from_argv, trace_line,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mask_text_keeps_first_letter_and_domain_only():
    assert mask_text("to ann.lee+x@example.co.uk now") == "to a***@example.co.uk now"
    assert mask_text("a@b.io and zed@mail.example.com") == "a***@b.io and z***@mail.example.com"
    assert mask_text("no address @ here, user@localhost") == "no address @ here, user@localhost"


def test_mask_walks_nested_data_keys_included():
    data = {"customer_email": "bob@example.com",
            "lines": [{"note": "call bob@example.com"}], "bob@example.com": 1, "n": 3}
    assert mask(data) == {"customer_email": "b***@example.com",
                          "lines": [{"note": "call b***@example.com"}], "b***@example.com": 1, "n": 3}


def test_plain_log_records_are_masked_in_message_args_and_traceback():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "order for %s failed", ("eve@example.org",), None)
    try:
        raise ValueError("bad address eve@example.org")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    assert MaskEmails().filter(record)
    text = logging.Formatter().format(record)
    assert "eve@example.org" not in text
    assert "order for e***@example.org failed" in text
    assert "bad address e***@example.org" in text


def _trace(stage=constants.Stage.response, **extra):
    data = {
        constants.TIMESTAMP_KEY: datetime(2026, 11, 25, 12, 0, 1),
        constants.SERVICE_NAME_KEY: "orders",
        constants.ENTRYPOINT_TYPE_KEY: "ReliableEventHandler",
        constants.ENTRYPOINT_NAME_KEY: "confirm_order",
        constants.CONTEXT_DATA_KEY: {"correlation_id": "req-1", "user_agent": "x"},
        constants.CALL_ID_KEY: "orders.confirm_order.1",
        constants.CALL_ID_STACK_KEY: ["orders.http_place_order.0", "orders.confirm_order.1"],
        constants.STAGE_KEY: stage.value,
        constants.REQUEST_KEY: {"body": {"customer_email": "ann@example.com", "lines": [1] * 400}},
        constants.REQUEST_REDACTED_KEY: False,
    }
    if stage == constants.Stage.response:
        data[constants.RESPONSE_TIME_KEY] = 0.25
        data[constants.RESPONSE_STATUS_KEY] = "success"
    data.update(extra)
    return data


def _record(data):
    record = logging.LogRecord("nameko_tracer", logging.INFO, __file__, 1, "trace", (), None)
    setattr(record, constants.TRACE_KEY, data)
    return record


def test_trace_line_has_the_fields_people_search_by_and_no_full_body():
    line = json.loads(TraceFormatter().format(_record(_trace())))
    assert line["service"] == "orders"
    assert line["entrypoint"] == "confirm_order"
    assert line["kind"] == "event"
    assert line["correlation_id"] == "req-1"
    assert line["call_id"] == "orders.confirm_order.1"
    assert line["duration_ms"] == 250.0
    assert line["outcome"] == "success"
    assert line["started_at"] == "2026-11-25T12:00:00.750000Z"
    assert line["timestamp"] == "2026-11-25T12:00:01Z"
    text = json.dumps(line)
    assert "ann@example.com" not in text
    assert len(line["call"]["summary"]) < 400  # cut short, not the whole body
    assert "user_agent" not in text


def test_trace_line_on_error_names_the_exception_and_masks_its_message():
    data = _trace(**{constants.RESPONSE_STATUS_KEY: "error",
                     constants.EXCEPTION_TYPE_KEY: "InvalidInput",
                     constants.EXCEPTION_VALUE_KEY: "bad email zoe@example.net",
                     constants.EXCEPTION_EXPECTED_KEY: True,
                     constants.EXCEPTION_TRACEBACK_KEY: "Traceback ... zoe@example.net"})
    line = trace_line(data)
    assert line["outcome"] == "error"
    assert line["exception_type"] == "InvalidInput"
    assert line["exception"] == "bad email z***@example.net"
    assert "traceback" not in line  # expected errors are the caller's fault, not ours

    data[constants.EXCEPTION_EXPECTED_KEY] = False
    assert trace_line(data)["traceback"] == "Traceback ... z***@example.net"


def test_filter_keeps_one_line_per_call_and_skips_noise():
    keep = TraceFilter()
    assert keep.filter(_record(_trace()))
    assert not keep.filter(_record(_trace(stage=constants.Stage.request)))
    both = TraceFilter(stages="request,response", skip=["confirm_order"])
    assert not both.filter(_record(_trace()))
    assert TraceFilter(stages="request, response").filter(_record(_trace(stage=constants.Stage.request)))


def _worker(entrypoint_type, *args, **kwargs):
    entrypoint = type(entrypoint_type, (), {"method_name": "m"})()
    return SimpleNamespace(entrypoint=entrypoint, args=args, kwargs=kwargs)


def test_adapters_record_an_events_identity_not_its_data():
    adapter = TraceAdapter(logging.getLogger("t"), extra={})
    body = {"id": "ev-1", "type": "order_created", "source": "orders",
            "data": {"customer_email": "ann@example.com"}}
    call, summarised = adapter.get_call_args(_worker("EventHandler", body))
    assert call == {"event_id": "ev-1", "event_type": "order_created", "source": "orders"}
    assert summarised
    assert adapter.get_result({"anything": "ann@example.com"}) is None

    call, _ = adapter.get_call_args(_worker("Rpc", "x" * 1000, limit=5))
    assert len(call["summary"]) < 400

    # events handled together: which ones, still not what they carry
    other = dict(body, id="ev-2")
    call, _ = adapter.get_call_args(_worker("BatchingEventHandler", batch=[(body, {}), (other, {})]))
    assert call == {"event_ids": ["ev-1", "ev-2"], "event_type": "order_created"}


def test_http_adapter_never_reads_the_body():
    from werkzeug.test import EnvironBuilder
    request = EnvironBuilder(method="POST", path="/orders", query_string="a=1",
                             data=b'{"customer_email": "ann@example.com"}',
                             content_type="application/json").get_request()
    adapter = HttpTraceAdapter(logging.getLogger("t"), extra={})
    call, _ = adapter.get_call_args(_worker("JsonHttpHandler", request))
    assert call == {"request": {"method": "POST", "path": "/orders", "content_length": 37, "query": "a=1"}}
    assert request.get_data() == b'{"customer_email": "ann@example.com"}'  # still there for the handler
    assert adapter.get_result((202, {"id": 1})) == {"status": 202}


def test_service_name_comes_from_the_nameko_run_arguments(monkeypatch):
    monkeypatch.delenv("SERVICE_NAME", raising=False)
    argv = ["nameko", "run", "--config", "config.yaml", "services.inventory.service:InventoryService"]
    assert service_name_from_argv(argv) == "inventory"
    monkeypatch.setenv("SERVICE_NAME", "billing")
    assert service_name_from_argv(argv) == "billing"


def make_ticker():
    """A timer-driven service, traced the way config.yaml sets the real ones up.

    A new class per test: its ``ticks`` are that test's alone, so no test's
    result depends on which ran before it.
    """

    class Ticker:
        name = "ticker"
        tracer = Tracer()
        correlation_id = CorrelationId()
        ticks = []

        @timer(interval=0.05)
        def tick(self):
            self.ticks.append(self.correlation_id)
            if len(self.ticks) == 2:
                raise RuntimeError("bad tick for zed@example.net")

    return Ticker


def test_timer_calls_get_one_masked_line_each_with_their_own_correlation_id(container_factory):
    config = load_config(os.path.join(ROOT, "config.yaml"))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TraceFormatter())
    handler.addFilter(TraceFilter())
    tracer_logger = logging.getLogger("nameko_tracer")
    tracer_logger.addHandler(handler)
    tracer_logger.setLevel(logging.INFO)
    Ticker = make_ticker()
    try:
        container = container_factory(Ticker, {"TRACER": config["TRACER"]})
        container.start()
        with eventlet.Timeout(5):
            while len(stream.getvalue().splitlines()) < 2:
                eventlet.sleep(0.02)
        container.stop()
    finally:
        tracer_logger.removeHandler(handler)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()[:2]]
    assert (first["kind"], first["entrypoint"], first["outcome"]) == ("timer", "tick", "success")
    assert (second["outcome"], second["exception_type"]) == ("error", "RuntimeError")
    assert second["exception"] == "bad tick for z***@example.net"
    assert "zed@example.net" not in second["traceback"]
    assert first["correlation_id"] == Ticker.ticks[0] and second["correlation_id"] == Ticker.ticks[1]
    assert first["correlation_id"] != second["correlation_id"]
    assert "call" not in first  # nothing to summarise


class Stages(logging.Handler):
    """Every nameko_tracer record's stage, before any filter."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        self.seen.append(getattr(record, constants.TRACE_KEY)[constants.STAGE_KEY])


def _stages_traced(container_factory, stages):
    config = load_config(os.path.join(ROOT, "config.yaml"))
    handler = Stages()
    tracer_logger = logging.getLogger("nameko_tracer")
    tracer_logger.addHandler(handler)
    tracer_logger.setLevel(logging.INFO)
    Ticker = make_ticker()
    try:
        container = container_factory(Ticker, {"TRACER": dict(config["TRACER"], STAGES=stages)})
        container.start()
        with eventlet.Timeout(5):
            while handler.seen.count("response") < 3:
                eventlet.sleep(0.02)
        container.stop()
    finally:
        tracer_logger.removeHandler(handler)
    return handler.seen


def test_only_the_stages_configured_are_built_at_all(container_factory):
    # the default keeps the response line only: the request record is never made
    assert set(_stages_traced(container_factory, "response")) == {"response"}
    both = _stages_traced(container_factory, "request,response")
    assert both.count("request") >= both.count("response") >= 3


@pytest.mark.parametrize("error, status", [
    (OperationalError("SELECT 1", {}, Exception("could not connect to server")), 503),
    (NotFound("No order with id x.", details={"order_id": ["x"]}), 404),
    (RemoteError("KeyError", "inventory broke"), 502),
    (RuntimeError("a bug"), 500),
])
def test_an_http_error_is_traced_with_the_status_the_client_got(error, status):
    handler = JsonHttpHandler("POST", "/orders")
    worker_ctx = SimpleNamespace(entrypoint=handler, args=(), kwargs={})
    data = {}
    HttpTraceAdapter(logging.getLogger("t"), extra={}).set_exception(data, worker_ctx, (type(error), error, None))
    assert data[constants.RESPONSE_KEY] == {"status": status}
    assert handler.error_response(error).status_code == status  # the same answer, one mapping


PHONE = "+447700900123"
APNS = "a1b2c3d4" * 8  # 64 hex digits, the shape of an APNs device token
FCM = "cX9Qa1b2c3d4:APA91bH" + "k" * 120
OPAQUE_TOKEN = "push-token-opaque-98765"


def test_phone_numbers_push_tokens_and_percent_encoded_emails_are_masked_in_text():
    assert mask_text("sms to +447700900123 failed") == "sms to +***23 failed"
    assert mask_text("phone=%2B447700900123&x=1") == "phone=%2B***23&x=1"
    assert mask_text("customer_email=carol.customer%40example.com&limit=5") == \
        "customer_email=c***%40example.com&limit=5"
    assert APNS not in mask_text("token " + APNS) and FCM not in mask_text("token " + FCM)
    assert OPAQUE_TOKEN not in mask_text('{"device_token": "%s"}' % OPAQUE_TOKEN)
    assert OPAQUE_TOKEN not in mask_text("device_token=" + OPAQUE_TOKEN)
    # what is not contact data stays readable
    for text in ("2026-11-25T12:00:01+00:00", "took 1234567 ms", "order 3f2a9c1e-0000-4000-8000-000000000001"):
        assert mask_text(text) == text


class Preferences:
    name = "notifications"

    def set_preferences(self, customer_email, channels, phone=None, device_token=None):
        pass


def _rpc_worker(*args, **kwargs):
    entrypoint = type("Rpc", (), {"method_name": "set_preferences"})()
    return SimpleNamespace(entrypoint=entrypoint, service=Preferences(), args=args, kwargs=kwargs)


@pytest.mark.parametrize("call", [
    lambda: _rpc_worker("ann@example.com", ["sms", "push"], PHONE, OPAQUE_TOKEN),
    lambda: _rpc_worker("ann@example.com", ["sms", "push"], phone=PHONE, device_token=OPAQUE_TOKEN),
])
def test_trace_lines_mask_phones_and_push_tokens_passed_by_position_or_name(call):
    adapter = TraceAdapter(logging.getLogger("t"), extra={})
    arguments, _ = adapter.get_call_args(call())
    text = json.dumps(trace_line(_trace(**{constants.REQUEST_KEY: arguments})))
    for secret in ("ann@example.com", PHONE, OPAQUE_TOKEN):
        assert secret not in text
    assert "+***23" in text and "a***@example.com" in text


def test_trace_lines_mask_emails_percent_encoded_in_the_query_string():
    from werkzeug.test import EnvironBuilder
    request = EnvironBuilder(method="GET", path="/orders",
                             query_string="customer_email=carol.customer%40example.com&phone=%2B15551234567"
                             ).get_request()
    adapter = HttpTraceAdapter(logging.getLogger("t"), extra={})
    arguments, _ = adapter.get_call_args(_worker("JsonHttpHandler", request))
    line = json.loads(TraceFormatter().format(_record(_trace(**{constants.REQUEST_KEY: arguments}))))
    assert line["call"]["request"]["query"] == "customer_email=c***%40example.com&phone=%2B***67"
