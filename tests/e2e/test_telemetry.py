"""One order, one OpenTelemetry trace, across three ``nameko run`` processes.

The services export over OTLP/HTTP (the SDK's own exporter, as in
production) to a small OTLP receiver in the test, which decodes the
protobuf requests with the OpenTelemetry proto classes. Checked: the spans
of ``POST /orders``, of inventory and of notifications share one trace id,
every parent link points at a span of that trace, and an event the outbox
relays after orders was killed still joins the trace of the request that
wrote it.
"""
import gzip
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)
from sqlalchemy import text

from tests.support import eventually, free_port
from tests.support.faults import Databases, make_system

EMAIL = "tracy.trace@example.com"


class OtlpReceiver:
    """Collects the spans POSTed to ``/v1/traces`` as dicts (hex ids, service name)."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.collect(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = "http://127.0.0.1:{}".format(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def collect(self, request):
        found = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append({
                        "service": attributes.get("service.name"), "name": span.name,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(), "kind": span.kind,
                        "attributes": {a.key: a.value for a in span.attributes},
                    })
        with self.lock:
            self.spans.extend(found)

    def trace(self, trace_id):
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = OtlpReceiver()
    yield running
    running.stop()


def telemetry_env(receiver):
    # the SDK's batch processor sends every 200 ms instead of every 5 s
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}


def by_name(spans, service, name):
    found = [span for span in spans if span["service"] == service and span["name"] == name]
    assert len(found) == 1, "expected one {} span {!r} in {}".format(
        service, name, [(span["service"], span["name"], span["span_id"], span["parent_span_id"]) for span in spans])
    return found[0]


def assert_connected(spans, *outside):
    """Every span's parent is a span of the same trace, or none, or one of ``outside``."""
    ids = {span["span_id"] for span in spans} | {""} | set(outside)
    for span in spans:
        assert span["parent_span_id"] in ids, \
            "{} {!r} has a parent outside the trace".format(span["service"], span["name"])


def settled_and_notified(system, order_id):
    order = system.order(order_id)
    if order["status"] == "pending":
        return None
    with system.rpc() as rpc:
        return rpc.notifications.list_notifications(order_id=order_id, status="sent")


# One order placed with a malformed traceparent and followed to its notification, its
# spans collected; each test below checks one thing about its trace.

@pytest.fixture(scope="module")
def module_receiver():
    """The ``receiver`` fixture's, for the module's scenario (stopped after its system)."""
    running = OtlpReceiver()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def order_trace(module_receiver, module_service_config, module_system):
    """The spans of the order's trace and its root (the POST /orders span)."""
    receiver = module_receiver
    system = module_system(module_service_config())
    system.env.update(telemetry_env(receiver))
    system.start()
    system.create_products(("OTEL-1", "Lamp", 1999, 10))
    # a malformed traceparent is ignored: the request starts a trace of its own
    response = system.place_order(EMAIL, [("OTEL-1", 1)], headers={"traceparent": "00-not-a-trace-01"})
    assert response.status_code == 202, response.text
    order_id = response.json()["id"]
    eventually(lambda: settled_and_notified(system, order_id), timeout=30, message="order notified")

    def placed():
        return [span for span in receiver.spans
                if span["service"] == "orders" and span["name"] == "POST /orders"]
    root = eventually(placed, message="the POST /orders span")[0]

    def whole():
        spans = receiver.trace(root["trace_id"])
        names = {(span["service"], span["name"]) for span in spans}
        return spans if {("notifications", "order_confirmed process"),
                         ("orders", "order_confirmed publish")} <= names else None
    eventually(whole, timeout=20, message="notifications' span in the order's trace")
    system.stop_all()
    time.sleep(0.5)  # anything flushed on shutdown
    return root, receiver.trace(root["trace_id"])


def test_a_malformed_traceparent_starts_a_trace_of_its_own(order_trace):
    root, spans = order_trace
    assert root["parent_span_id"] == "", "a malformed traceparent must not become a parent"
    assert [span for span in spans if span["parent_span_id"] == ""] == [root]


def test_the_three_services_add_their_spans_to_the_orders_trace_and_no_other(order_trace):
    root, spans = order_trace
    assert {span["service"] for span in spans} == {"orders", "inventory", "notifications"}
    # no other order's spans leaked in, and no trace id in other traces
    assert all(span["trace_id"] == root["trace_id"] for span in spans)


def test_every_parent_is_a_span_of_the_trace(order_trace):
    _, spans = order_trace
    assert_connected(spans)


def test_the_spans_follow_the_causal_chain_hop_by_hop(order_trace):
    root, spans = order_trace
    created = by_name(spans, "orders", "order_created publish")
    reserve = by_name(spans, "inventory", "order_created process")
    reserved = by_name(spans, "inventory", "stock_reserved publish")
    confirm = by_name(spans, "orders", "stock_reserved process")
    confirmed = by_name(spans, "orders", "order_confirmed publish")
    notify = by_name(spans, "notifications", "order_confirmed process")
    units = {span["span_id"]: span for span in spans if span["name"] == "unit of work"}
    assert units[created["parent_span_id"]]["parent_span_id"] == root["span_id"]
    assert reserve["parent_span_id"] == created["span_id"]
    assert units[reserved["parent_span_id"]]["parent_span_id"] == reserve["span_id"]
    assert confirm["parent_span_id"] == reserved["span_id"]
    assert units[confirmed["parent_span_id"]]["parent_span_id"] == confirm["span_id"]
    assert notify["parent_span_id"] == confirmed["span_id"]
    assert {span["service"] for span in units.values()} == {"orders", "inventory", "notifications"}


def test_an_event_relayed_after_a_restart_joins_the_trace_that_wrote_it(
        service_config, tmp_path, receiver, broker_proxy):
    proxy, proxied_uri = broker_proxy
    system = make_system(service_config, tmp_path, AMQP_URI=proxied_uri)
    system.env.update(telemetry_env(receiver))
    databases = Databases(system.config)
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    try:
        system.start()
        system.create_products(("OTEL-2", "Lamp", 1999, 10))
        proxy.cut()  # the outbox cannot publish: the event stays a row
        response = system.place_order(EMAIL, [("OTEL-2", 1)], headers={
            "traceparent": "00-{}-{}-01".format(trace_id, caller_span)})
        assert response.status_code == 202, response.text
        order_id = response.json()["id"]
        with databases.orders.connect() as connection:
            stored = connection.execute(text(
                "SELECT traceparent FROM outbox WHERE event_type = 'order_created' "
                "AND published_at IS NULL")).scalars().all()
        assert len(stored) == 1 and stored[0].startswith("00-{}-".format(trace_id)), stored
        # its spans so far reach the receiver within the batch delay
        eventually(lambda: [span for span in receiver.trace(trace_id) if span["name"] == "POST /orders"],
                   message="the POST /orders span")
        system.kill("orders")  # SIGKILL: the event leaves only through the next process's relay

        proxy.restore()
        system.start("orders")
        eventually(lambda: settled_and_notified(system, order_id), timeout=60, message="order notified")

        def relayed():
            names = {(span["service"], span["name"]) for span in receiver.trace(trace_id)}
            return {("inventory", "order_created process"),
                    ("notifications", "order_confirmed process")} <= names
        eventually(relayed, timeout=20, message="the relayed event's spans in the request's trace")
    finally:
        databases.close()
        system.stop_all()
    time.sleep(0.5)
    spans = receiver.trace(trace_id)

    root = by_name(spans, "orders", "POST /orders")
    assert root["parent_span_id"] == caller_span  # the client's traceparent was honoured
    # published by the restarted process, under the unit of work the killed one stored
    created = by_name(spans, "orders", "order_created publish")
    assert created["parent_span_id"] == stored[0].split("-")[2]
    assert by_name(spans, "inventory", "order_created process")["parent_span_id"] == created["span_id"]
    assert {span["service"] for span in spans} == {"orders", "inventory", "notifications"}
    # the killed process's own spans may not have been exported before SIGKILL
    assert_connected(spans, caller_span, stored[0].split("-")[2])
