"""Trace context through real RPC calls (the test's RabbitMQ vhost), spans in memory.

Two services in this process, each with the ``Telemetry`` dependency: a
caller's traceparent (nameko context data, i.e. message headers anyone on
the broker could forge) becomes the parent when valid and is ignored when
not, and the call the first service makes continues the same trace.
"""
import pytest
from nameko.rpc import RpcProxy, rpc
from nameko.standalone.rpc import ClusterRpcProxy
from opentelemetry.trace import SpanKind, StatusCode

from services.common.errors import InvalidInput
from services.common.observability.telemetry import Telemetry
from tests.support import eventually
from tests.support.telemetry_spans import hex_ids, memory_exporter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


class Front:
    name = "tel_front"
    telemetry = Telemetry()
    back = RpcProxy("tel_back")

    @rpc
    def ask(self, word):
        return self.back.echo(word)


class Back:
    name = "tel_back"
    telemetry = Telemetry()

    @rpc(expected_exceptions=InvalidInput)
    def echo(self, word):
        if word == "refuse":
            raise InvalidInput("no", details={"field": "word"})
        if word == "crash":
            raise RuntimeError("customer ann@example.com broke it")
        return word


@pytest.fixture
def services(container_factory, rabbit_config):
    spans = memory_exporter()
    for cls in (Front, Back):
        container_factory(cls, rabbit_config).start()
    return rabbit_config, spans


def call(config, context_data, word="hi", service="tel_front", method="ask"):
    with ClusterRpcProxy(config, timeout=10, context_data=context_data) as proxy:
        return getattr(getattr(proxy, service), method)(word)


def finished(spans, name, count=1):
    """The ended spans called ``name``; a span ends after its reply was sent, so wait for it."""
    return eventually(lambda: [span for span in spans.get_finished_spans() if span.name == name]
                      if len([span for span in spans.get_finished_spans() if span.name == name]) >= count
                      else None, timeout=5, message="{} span(s) {}".format(count, name))


def test_a_callers_traceparent_is_continued_through_the_next_call(services):
    config, spans = services
    assert call(config, {"traceparent": "00-{}-{}-01".format(TRACE_ID, SPAN_ID),
                         "tracestate": "vendor=x"}) == "hi"
    [front] = finished(spans, "tel_front.ask")
    [back] = finished(spans, "tel_back.echo")
    assert hex_ids(front) == (TRACE_ID, hex_ids(front)[1], SPAN_ID)
    assert hex_ids(back) == (TRACE_ID, hex_ids(back)[1], hex_ids(front)[1])
    assert front.kind == back.kind == SpanKind.SERVER
    assert back.context.trace_state.get("vendor") == "x"
    assert back.attributes["rpc.method"] == "echo"


@pytest.mark.parametrize("forged", [
    {"traceparent": "00-zz-01"}, {"traceparent": 7}, {"traceparent": "00-{}-{}-01\nx".format(TRACE_ID, SPAN_ID)},
    {"traceparent": "x" * 4000, "tracestate": "y" * 4000},
])
def test_a_forged_traceparent_starts_a_new_trace_and_the_call_still_works(services, forged):
    config, spans = services
    assert call(config, forged) == "hi"
    [front] = finished(spans, "tel_front.ask")
    [back] = finished(spans, "tel_back.echo")
    assert front.parent is None and hex_ids(front)[0] != TRACE_ID
    assert hex_ids(back)[0] == hex_ids(front)[0] and hex_ids(back)[2] == hex_ids(front)[1]


def test_failures_mark_the_span_by_type_only(services):
    config, spans = services
    with pytest.raises(Exception):
        call(config, {}, "refuse", service="tel_back", method="echo")
    with pytest.raises(Exception):
        call(config, {}, "crash", service="tel_back", method="echo")
    refused, crashed = finished(spans, "tel_back.echo", count=2)
    assert refused.attributes["error.type"] == "InvalidInput"
    assert refused.status.status_code == StatusCode.UNSET  # an expected answer, not a fault
    assert crashed.status.status_code == StatusCode.ERROR
    assert crashed.status.description == "RuntimeError"
    assert not crashed.events  # no exception message (it may carry customer data)
