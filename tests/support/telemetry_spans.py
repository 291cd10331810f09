"""The SDK's in-memory exporter on this process's tracer provider, for in-process telemetry tests.

The tracer provider is global and can be set once per process. The root
conftest installs one that records every trace (``install_provider``) before
any test runs, so the in-process service containers keep it
(``telemetry.configure`` keeps a provider it finds) instead of installing
theirs, which records only the traces a caller asked for when no exporter
is configured.
"""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter = None


def install_provider():
    """This process's tracer provider, installed if none is: the SDK's, recording every trace."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer_provider()


def memory_exporter():
    global _exporter
    if _exporter is None:
        provider = install_provider()
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
    _exporter.clear()
    return _exporter


def hex_ids(span):
    """``(trace id, span id, parent span id or None)`` of a finished span, as hex."""
    parent = format(span.parent.span_id, "016x") if span.parent is not None else None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"), parent
