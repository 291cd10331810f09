"""OpenTelemetry traces through nameko 2.14.1's own extension points.

``opentelemetry-instrumentation-nameko`` needs nameko 3, so this module does
the same with the OpenTelemetry SDK and nameko 2's public hooks:

- ``Telemetry`` (a ``DependencyProvider``, one attribute on each service)
  opens a span per entrypoint call in ``worker_setup`` and ends it in
  ``worker_teardown``. Its parent is the W3C trace context the call arrived
  with: the ``traceparent`` / ``tracestate`` HTTP headers, or the
  ``nameko.traceparent`` / ``nameko.tracestate`` message headers. The span
  is then written back into the worker's context data, which nameko copies
  into the headers of every RPC call and event the worker makes, so the
  next service continues the same trace.
- A SQLAlchemy session listener opens one span per unit of work (a
  session's outermost transaction) made by a traced worker.
- The outbox stores the ``traceparent`` of the transaction that wrote each
  row and ``PublishSpans`` opens a producer span per published event under
  it, so an event relayed after a restart still belongs to its trace.

Incoming trace context is untrusted input: anything the W3C format does not
allow (checked by the SDK's propagator, after a type and length check here)
is ignored and the call starts a new trace; it never fails the call.

Spans are exported over OTLP/HTTP (protobuf) when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set in the
environment or in config.yaml. Otherwise a trace is recorded only if the
caller's ``traceparent`` asked for it (sampled flag): the usual untraced call
gets trace and span ids, carried on and logged in JSON log lines
(``logs.py``), without the cost of recording spans that go nowhere, and its
units of work and published events get no spans of their own.
``service.name`` is the nameko service name unless ``OTEL_SERVICE_NAME``
says otherwise.
"""
import logging
import os
from contextlib import contextmanager

from nameko.extensions import DependencyProvider
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession

from services.common.observability.tracing import entrypoint_kind

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CONTEXT_KEYS = (TRACEPARENT, TRACESTATE)
# W3C: a traceparent is 55 characters in version 00; tracestate may be cut at 512
MAX_TRACEPARENT = 55
MAX_TRACESTATE = 512
ENDPOINT_KEYS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
FLUSH_TIMEOUT_MILLIS = 5000
INSTRUMENTATION = "services.common.observability.telemetry"

_propagator = TraceContextTextMapPropagator()
_SPAN = "telemetry.span"  # session.info key: the unit of work's span
_COMMITTED = "telemetry.committed"

KINDS = {"http": SpanKind.SERVER, "rpc": SpanKind.SERVER, "event": SpanKind.CONSUMER}


# trace context in and out ---------------------------------------------------

def _carrier(headers):
    """The trace headers worth parsing: strings of a length the format allows."""
    carrier = {}
    limits = {TRACEPARENT: MAX_TRACEPARENT, TRACESTATE: MAX_TRACESTATE}
    for key in CONTEXT_KEYS:
        value = headers.get(key) if headers is not None else None
        if isinstance(value, str) and 0 < len(value) <= limits[key]:
            carrier[key] = value
    return carrier


def extract(headers):
    """An OpenTelemetry context from untrusted ``traceparent``/``tracestate`` values.

    ``headers``: any mapping with ``get``. A missing or malformed traceparent
    gives a context without a parent span (the next span starts a trace).
    """
    return _propagator.extract(_carrier(headers))


def inject(context=None):
    """``{"traceparent": ..., "tracestate": ...}`` of ``context`` (the current one by default); {} if none."""
    carrier = {}
    _propagator.inject(carrier, context=context)
    return carrier


def traceparent_of(span):
    return inject(trace.set_span_in_context(span)).get(TRACEPARENT)


def current_traceparent(session=None):
    """The traceparent to store with an outbox row: the unit of work's span, else the current one."""
    span = session.info.get(_SPAN) if session is not None else None
    if span is None:
        span = trace.get_current_span()
    return traceparent_of(span) if span.get_span_context().is_valid else None


# the SDK, once per process ------------------------------------------------------

def otlp_endpoint(config=None):
    """``(environment key, URL)`` of the configured OTLP endpoint, or ``(None, None)``."""
    for key in ENDPOINT_KEYS:
        value = os.environ.get(key) or (config or {}).get(key)
        if value:
            return key, str(value)
    return None, None


def configure(service_name, config=None):
    """Install the SDK's tracer provider for this process, unless one is already installed.

    A provider set before (by a test, or by ``opentelemetry-instrument``) is
    kept. Returns the provider in use.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name})
    key, endpoint = otlp_endpoint(config)
    # nowhere to send spans: record only the traces a caller asked for (the
    # SDK's default sampler, ParentBased(ALWAYS_ON), records every one), unless
    # OTEL_TRACES_SAMPLER says otherwise (the SDK reads it when given None)
    chosen = endpoint or os.environ.get("OTEL_TRACES_SAMPLER")
    provider = TracerProvider(resource=resource, sampler=None if chosen else ParentBased(ALWAYS_OFF))
    if endpoint:
        # imported only when used: it brings requests and protobuf along
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        if key == "OTEL_EXPORTER_OTLP_ENDPOINT":
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("telemetry: exporting spans over OTLP/HTTP to %s", endpoint)
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


_tracers = {}  # provider -> tracer: getting one costs more than a span


def tracer():
    provider = trace.get_tracer_provider()
    found = _tracers.get(id(provider))
    if found is None or found[0] is not provider:
        found = _tracers[id(provider)] = (provider, provider.get_tracer(INSTRUMENTATION))
    return found[1]


# entrypoints --------------------------------------------------------------------

def _http_request(worker_ctx):
    request = worker_ctx.args[0] if worker_ctx.args else None
    return request if hasattr(request, "environ") and hasattr(request, "headers") else None


def _span_name_and_attributes(worker_ctx, kind):
    service = worker_ctx.service_name
    method = worker_ctx.entrypoint.method_name
    attributes = {"nameko.service": service, "nameko.entrypoint": method, "nameko.entrypoint.kind": kind}
    if kind == "http":
        request = _http_request(worker_ctx)
        route = getattr(worker_ctx.entrypoint, "url", None) or method
        verb = request.method if request is not None else "HTTP"
        attributes.update({"http.request.method": verb, "http.route": route})
        if request is not None:
            attributes["url.path"] = request.path
        return "{} {}".format(verb, route), attributes
    if kind == "rpc":
        attributes.update({"rpc.system": "nameko", "rpc.service": service, "rpc.method": method})
        return "{}.{}".format(service, method), attributes
    if kind == "event":
        source = getattr(worker_ctx.entrypoint, "source_service", None)
        event_type = getattr(worker_ctx.entrypoint, "event_type", None)
        attributes.update({"messaging.system": "rabbitmq", "messaging.operation.type": "process",
                           "messaging.destination.name": "{}.events".format(source),
                           "messaging.event_type": event_type})
        return "{} process".format(event_type), attributes
    return "{}.{}".format(service, method), attributes


class Telemetry(DependencyProvider):
    """A span per entrypoint call, parented on the trace context it came with.

    The worker's context data gets this span's ``traceparent`` (and
    ``tracestate``), so the RPC calls and events it makes carry it on.
    ``get_dependency`` gives the worker its span (``trace.Span``).
    """

    def __init__(self):
        self.workers = {}  # worker_ctx -> (span, context token)

    def setup(self):
        configure(self.container.service_name, self.container.config)

    def stop(self):
        provider = trace.get_tracer_provider()
        if hasattr(provider, "force_flush"):  # send what is buffered before the process goes
            provider.force_flush(FLUSH_TIMEOUT_MILLIS)

    def _incoming(self, worker_ctx, kind):
        if kind == "http":
            request = _http_request(worker_ctx)
            return request.headers if request is not None else None
        return worker_ctx.data

    def worker_setup(self, worker_ctx):
        kind = entrypoint_kind(type(worker_ctx.entrypoint).__name__)
        parent = extract(self._incoming(worker_ctx, kind))
        name, attributes = _span_name_and_attributes(worker_ctx, kind)
        span = tracer().start_span(name, context=parent, kind=KINDS.get(kind, SpanKind.INTERNAL),
                                   attributes=attributes)
        context = trace.set_span_in_context(span, parent)
        token = otel_context.attach(context)
        self.workers[worker_ctx] = (span, token)
        # replace whatever arrived (valid or not) with this span: nameko sends
        # the context data on with every call and event the worker makes
        for key in CONTEXT_KEYS:
            worker_ctx.data.pop(key, None)
        worker_ctx.data.update(inject(context))

    def get_dependency(self, worker_ctx):
        entry = self.workers.get(worker_ctx)
        return entry[0] if entry is not None else trace.INVALID_SPAN

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        entry = self.workers.get(worker_ctx)
        if entry is None:
            return
        span = entry[0]
        status = getattr(result, "status_code", None)
        if status is None and isinstance(result, tuple) and result and isinstance(result[0], int):
            status = result[0]
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        if exc_info is not None:
            # the type only: exception messages may carry customer data
            error_type = type(exc_info[1]).__name__
            span.set_attribute("error.type", error_type)
            expected = getattr(worker_ctx.entrypoint, "expected_exceptions", ()) or ()
            if not isinstance(exc_info[1], expected):
                span.set_status(Status(StatusCode.ERROR, error_type))

    def worker_teardown(self, worker_ctx):
        entry = self.workers.pop(worker_ctx, None)
        if entry is None:
            return
        span, token = entry
        span.end()
        otel_context.detach(token)


# units of work ------------------------------------------------------------------
# Registered once on the Session class, like the outbox's listeners: every
# session a traced worker opens gets a span for its outermost transaction.

@event.listens_for(OrmSession, "after_begin")
def _unit_of_work_begins(session, transaction, connection):
    if _SPAN in session.info or transaction.nested or transaction.parent is not None:
        return
    parent = trace.get_current_span()
    if not parent.is_recording():
        return  # background work (relay, clean-ups), or a trace not recorded: no span to add
    session.info[_SPAN] = tracer().start_span(
        "unit of work", kind=SpanKind.CLIENT,
        attributes={"db.system": connection.dialect.name, "db.operation.name": "transaction"})


@event.listens_for(OrmSession, "after_commit")
def _unit_of_work_commits(session):
    if _SPAN in session.info:
        session.info[_COMMITTED] = True


@event.listens_for(OrmSession, "after_transaction_end")
def _unit_of_work_ends(session, transaction):
    if transaction.parent is not None or transaction.nested:
        return
    span = session.info.pop(_SPAN, None)
    if span is None:
        return
    committed = session.info.pop(_COMMITTED, False)
    span.set_attribute("db.transaction.outcome", "commit" if committed else "rollback")
    span.end()


@contextmanager
def delivery_span(session, worker_ctx, headers):
    """A span for one event of a batch handled in one unit of work (``Work.delivery``).

    Named and described as the span of a worker of its own would be, child
    of the event's own trace context (``headers``: its message's context
    data), current inside, and the span the outbox stores with the events it
    causes, so each event's trace goes on as if it had had a worker of its own.
    """
    parent = extract(headers)
    name, attributes = _span_name_and_attributes(worker_ctx, "event")
    span = tracer().start_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    outer = session.info.get(_SPAN)
    session.info[_SPAN] = span
    try:
        yield span
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        raise
    finally:
        if outer is None:
            session.info.pop(_SPAN, None)
        else:
            session.info[_SPAN] = outer
        span.end()
        otel_context.detach(token)


# outbox publishing --------------------------------------------------------------

class PublishSpans:
    """A producer span per outbox event, under the traceparent its row stored.

    ``messages``: ``(event id, event type, exchange name, traceparent or None)``.
    ``headers(event_id)`` gives the message headers that make the consumer's
    span a child of this one; ``end(confirmed_ids)`` ends them all, marking
    those the broker did not confirm as errors. Events without a valid
    stored traceparent get no span and no trace headers; those of a trace
    not sampled get no span and carry the stored traceparent on.
    """

    def __init__(self, messages):
        self.spans = {}
        self.passed_on = {}  # event id -> traceparent of a trace not recorded
        for event_id, event_type, exchange, traceparent in messages:
            parent = extract({TRACEPARENT: traceparent})
            parent_context = trace.get_current_span(parent).get_span_context()
            if not parent_context.is_valid:
                continue
            if not parent_context.trace_flags.sampled:
                self.passed_on[event_id] = traceparent
                continue
            span = tracer().start_span(
                "{} publish".format(event_type), context=parent, kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "rabbitmq", "messaging.operation.type": "publish",
                            "messaging.destination.name": exchange, "messaging.message.id": event_id,
                            "messaging.event_type": event_type})
            self.spans[event_id] = span

    def headers(self, event_id):
        span = self.spans.get(event_id)
        if span is None:
            passed_on = self.passed_on.get(event_id)
            return {"nameko." + TRACEPARENT: passed_on} if passed_on else {}
        return {"nameko." + key: value for key, value in inject(trace.set_span_in_context(span)).items()}

    def end(self, confirmed):
        confirmed = set(confirmed)
        for event_id, span in self.spans.items():
            if event_id not in confirmed:
                span.set_status(Status(StatusCode.ERROR, "not confirmed"))
            span.end()
        self.spans = {}
