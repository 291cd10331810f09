"""Service log lines as text for people or JSON for a log pipeline (``LOG_FORMAT``).

config.yaml builds the services' log formatter with ``formatter(kind=...)``,
``kind`` coming from ``LOG_FORMAT`` (``text``, the default, or ``json``), so
one setting switches every service's application log lines; nameko-tracer's
trace lines are JSON either way. A JSON line is one object per record with
``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``correlation_id`` (the X-Request-ID that follows an order), ``trace_id`` and
``span_id`` (the current OpenTelemetry span, when the SDK is installed and a
span is active; null otherwise), ``exc_info`` for a traceback, and any
``extra=`` fields. python-json-logger does the serialising; this module only
names the fields and keeps email addresses masked in tracebacks too.
"""
import logging

from pythonjsonlogger.json import JsonFormatter

from services.common.observability.masking import mask_text

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"
JSON_FIELDS = ("levelname", "name", "message", "correlation_id")
RENAMED = {"levelname": "level", "name": "logger"}
KINDS = ("text", "json")

try:  # OpenTelemetry is optional: without it lines carry no trace id
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on what is installed
    _otel_trace = None


def current_trace_ids():
    """``(trace_id, span_id)`` of the active OpenTelemetry span as hex, or ``(None, None)``."""
    if _otel_trace is None:
        return None, None
    context = _otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class ServiceJsonFormatter(JsonFormatter):
    """One JSON object per line, with the correlation and trace ids."""

    def __init__(self):
        super().__init__(list(JSON_FIELDS), rename_fields=RENAMED, timestamp=True)

    def add_fields(self, log_data, record, message_dict):
        super().add_fields(log_data, record, message_dict)
        if log_data.get("correlation_id") in (None, "-"):
            log_data["correlation_id"] = None
        log_data["trace_id"], log_data["span_id"] = current_trace_ids()

    def formatException(self, exc_info):
        # MaskEmails masks exc_text, but python-json-logger formats exc_info again
        return mask_text(super().formatException(exc_info))


def formatter(kind="text", fmt=TEXT_FORMAT):
    """The formatter for ``LOG_FORMAT`` (logging.config's ``()`` factory in config.yaml)."""
    kind = str(kind or "text").strip().lower()
    if kind == "json":
        return ServiceJsonFormatter()
    if kind == "text":
        return logging.Formatter(fmt)
    raise ValueError("LOG_FORMAT must be one of {}, not {!r}".format(", ".join(KINDS), kind))


class ExpectedErrors(logging.Filter):
    """nameko's line for an expected error (a 404, a 401, a refused value) as one INFO line.

    nameko 2.14 logs every exception an entrypoint declares as expected at
    WARNING with a whole traceback: a client's typo fills the log like a
    fault, and the traceback's frames carry the request's values. The trace
    line already records the outcome; this keeps the one-line message and
    drops the traceback. Unexpected errors are left as they are.
    """

    PREFIX = "(expected) error handling worker"

    def filter(self, record):
        if record.name == "nameko.containers" and str(record.msg).startswith(self.PREFIX):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True
