"""Entrypoint traces: one JSON line per call, safe to keep.

nameko-tracer's ``Tracer()`` (in every service) hands two records per
entrypoint call to the ``nameko_tracer`` logger: one when the worker starts
and one with the outcome. What it puts in them by default is too much to keep
(every argument, every result, whole HTTP bodies with customer data) and it
is spread over two lines. This module narrows that down:

- ``TraceAdapter`` / ``HttpTraceAdapter`` (registered in config.yaml under
  ``TRACER: ADAPTERS``) record a summary of the call instead of its data: an
  event's id and type, an RPC's arguments cut short, an HTTP request's method,
  path and size, and no results at all;
- ``TraceFilter`` keeps only the response stage, which carries the start
  time, duration and outcome, so each call is one line;
- ``TraceFormatter`` writes the line with stable field names and masks email
  addresses (percent-encoded ones too), phone numbers and push tokens
  anywhere in it (``masking.py``);
- ``ServiceLogHandler`` writes to ``$LOG_DIR/<service>[.trace].log`` when
  ``LOG_DIR`` is set; stdout stays the default.
"""
import inspect
import json
import logging
import os
import re
import sys
from datetime import datetime, timedelta

from nameko_tracer import Tracer as NamekoTracer
from nameko_tracer import constants
from nameko_tracer.adapters import DefaultAdapter

from services.common.observability.correlation import CONTEXT_KEY, is_valid_correlation_id
from services.common.observability.masking import SENSITIVE_KEYS, mask

MAX_ARGS_CHARS = 300
MAX_EXCEPTION_CHARS = 500
MAX_TRACEBACK_CHARS = 4000


def _cut(text, limit):
    return text if len(text) <= limit else text[:limit] + "...[{} chars]".format(len(text))


def entrypoint_kind(entrypoint_type):
    name = entrypoint_type.lower()
    for kind in ("http", "rpc", "event", "timer"):
        if kind in name:
            return kind
    return name


def trace_stages(stages):
    """``"request,response"`` -> ``{"request", "response"}``; empty means the default, response only."""
    if isinstance(stages, str):
        stages = [stage.strip() for stage in stages.split(",") if stage.strip()]
    return set(stages or ["response"])


class Tracer(NamekoTracer):
    """nameko-tracer's dependency, minus the request-stage record nobody keeps.

    nameko-tracer builds and logs a record when every worker starts; with
    ``TRACE_STAGES`` at its default (``response``) the ``TraceFilter`` then
    throws it away, after its data, log record and filters were paid for,
    once per order hop. The timestamp the response record needs is still
    taken. ``TRACER: STAGES`` (config.yaml, from ``TRACE_STAGES``) says
    which stages are built.
    """

    def setup(self):
        super().setup()
        self.stages = trace_stages(self.container.config.get(constants.CONFIG_KEY, {}).get("STAGES"))

    def worker_setup(self, worker_ctx):
        if constants.Stage.request.value in self.stages:
            return super().worker_setup(worker_ctx)
        self.worker_timestamps[worker_ctx] = datetime.utcnow()


class TraceAdapter(DefaultAdapter):
    """Summaries instead of payloads, for RPC, event and timer entrypoints."""

    def get_call_args(self, worker_ctx):
        if getattr(worker_ctx.entrypoint, "sensitive_arguments", None):
            return super().get_call_args(worker_ctx)  # nameko's own redaction
        args = list(worker_ctx.args)
        if len(args) == 1 and not worker_ctx.kwargs and isinstance(args[0], dict) \
                and {"id", "type"} <= set(args[0]):
            # an event envelope: its id and type say which one, the data is the customer's
            body = args[0]
            return {"event_id": body.get("id"), "event_type": body.get("type"),
                    "source": body.get("source")}, True
        batch = worker_ctx.kwargs.get("batch") if not args else None
        if isinstance(batch, list) and len(worker_ctx.kwargs) == 1:
            # events handled together (BatchingEventHandler): which ones, not their data
            return {"event_ids": [_event_field(body, "id") for body, _ in batch],
                    "event_type": _event_field(batch[0][0], "type")}, True
        if not args and not worker_ctx.kwargs:
            return {}, False
        args, kwargs = _mask_named_arguments(worker_ctx, args, dict(worker_ctx.kwargs))
        text = json.dumps({"args": args, "kwargs": kwargs}, default=str)
        return {"summary": _cut(text, MAX_ARGS_CHARS)}, True

    def get_result(self, result):
        return None


def _event_field(body, name):
    return body.get(name) if isinstance(body, dict) else None


def _mask_named_arguments(worker_ctx, args, kwargs):
    """Phone numbers and push tokens passed by position, masked by their parameter's name.

    The text masking finds them by name in keyword arguments and by shape; a
    device token passed positionally has neither, so the method's signature
    names it.
    """
    try:
        method = getattr(worker_ctx.service, worker_ctx.entrypoint.method_name)
        names = list(inspect.signature(method).parameters)
    except (AttributeError, TypeError, ValueError):
        return args, kwargs
    for index, name in enumerate(names[:len(args)]):
        if name.lower() in SENSITIVE_KEYS and isinstance(args[index], str):
            args[index] = mask({name: args[index]})[name]
    for name in kwargs:
        if name.lower() in SENSITIVE_KEYS and isinstance(kwargs[name], str):
            kwargs[name] = mask({name: kwargs[name]})[name]
    return args, kwargs


class HttpTraceAdapter(TraceAdapter):
    """Method, path and size of the request and the response status; no bodies.

    It never touches ``request.data`` (nameko-tracer's own HTTP adapter does,
    which consumes a form-encoded body before the handler sees it).
    """

    def get_call_args(self, worker_ctx):
        request = worker_ctx.args[0] if worker_ctx.args else None
        if request is None or not hasattr(request, "environ"):
            return super().get_call_args(worker_ctx)
        summary = {"method": request.method, "path": request.path,
                   "content_length": request.content_length}
        if request.query_string:
            summary["query"] = _cut(request.query_string.decode("latin-1"), MAX_ARGS_CHARS)
        return {"request": summary}, True

    def set_exception(self, data, worker_ctx, exc_info):
        super().set_exception(data, worker_ctx, exc_info)
        # the status the client got, from the handler that answered it
        answer = getattr(worker_ctx.entrypoint, "error_response", None)
        status = answer(exc_info[1]).status_code if answer is not None else 500
        data[constants.RESPONSE_KEY] = {"status": status}

    def get_result(self, result):
        if hasattr(result, "status_code"):
            return {"status": result.status_code}
        if isinstance(result, tuple):
            return {"status": result[0]}
        return {"status": 200}


class TraceFilter(logging.Filter):
    """Keeps the trace records of the wanted stages and entrypoints.

    ``stages`` is ``response`` (one line per call, the default), ``request``,
    or ``request,response`` to also see calls that never finish (a killed
    process). ``skip`` names entrypoints not worth a line each (a scraper
    polling ``/metrics``).
    """

    def __init__(self, stages="response", skip=()):
        super().__init__()
        self.stages = trace_stages(stages)
        self.skip = set(skip or ())

    def filter(self, record):
        data = getattr(record, constants.TRACE_KEY, None)
        if not isinstance(data, dict):
            return True
        return (data.get(constants.STAGE_KEY) in self.stages
                and data.get(constants.ENTRYPOINT_NAME_KEY) not in self.skip)


def trace_line(data):
    """The fields of one trace line, from nameko-tracer's record data."""
    context = data.get(constants.CONTEXT_DATA_KEY) or {}
    entrypoint_type = data.get(constants.ENTRYPOINT_TYPE_KEY, "")
    timestamp = data.get(constants.TIMESTAMP_KEY)
    line = {
        "timestamp": timestamp.isoformat() + "Z" if hasattr(timestamp, "isoformat") else timestamp,
        "service": data.get(constants.SERVICE_NAME_KEY),
        "entrypoint": data.get(constants.ENTRYPOINT_NAME_KEY),
        "kind": entrypoint_kind(entrypoint_type),
        "entrypoint_type": entrypoint_type,
        "stage": data.get(constants.STAGE_KEY),
        # CorrelationId replaces an invalid id before the worker runs; a
        # request-stage line may be built before that
        "correlation_id": context.get(CONTEXT_KEY) if is_valid_correlation_id(context.get(CONTEXT_KEY))
        else "invalid",
        "call_id": data.get(constants.CALL_ID_KEY),
        "call_id_stack": data.get(constants.CALL_ID_STACK_KEY),
        "origin_call_id": data.get(constants.ORIGIN_CALL_ID_KEY),
        "hostname": data.get(constants.HOSTNAME_KEY),
        "pid": os.getpid(),
    }
    call_args = data.get(constants.REQUEST_KEY)
    if call_args:
        text = json.dumps(call_args, default=str)
        line["call"] = call_args if len(text) <= 2 * MAX_ARGS_CHARS else \
            {"summary": _cut(text, MAX_ARGS_CHARS)}
    if data.get(constants.STAGE_KEY) == constants.Stage.response.value:
        seconds = data.get(constants.RESPONSE_TIME_KEY) or 0.0
        if hasattr(timestamp, "isoformat"):
            line["started_at"] = (timestamp - timedelta(seconds=seconds)).isoformat() + "Z"
        line["duration_ms"] = round(seconds * 1000, 3)
        line["outcome"] = data.get(constants.RESPONSE_STATUS_KEY)
        response = data.get(constants.RESPONSE_KEY)
        if isinstance(response, dict) and "status" in response:
            line["http_status"] = response["status"]
        if data.get(constants.EXCEPTION_TYPE_KEY):
            line["exception_type"] = data[constants.EXCEPTION_TYPE_KEY]
            line["exception_expected"] = bool(data.get(constants.EXCEPTION_EXPECTED_KEY))
            line["exception"] = _cut(str(data.get(constants.EXCEPTION_VALUE_KEY, "")),
                                     MAX_EXCEPTION_CHARS)
            if not line["exception_expected"]:
                line["traceback"] = _cut(str(data.get(constants.EXCEPTION_TRACEBACK_KEY, "")),
                                         MAX_TRACEBACK_CHARS)
    return mask(line)


class TraceFormatter(logging.Formatter):
    """One JSON object per line, emails masked; see ``trace_line``."""

    def format(self, record):
        data = getattr(record, constants.TRACE_KEY, None)
        if not isinstance(data, dict):  # not a trace record: mask it all the same
            return json.dumps(mask({"message": record.getMessage(), "logger": record.name}))
        return json.dumps(trace_line(data), default=str)


def service_name_from_argv(argv=None):
    """The service this process runs, as ``nameko run`` was told (``SERVICE_NAME`` wins)."""
    if os.environ.get("SERVICE_NAME"):
        return os.environ["SERVICE_NAME"]
    for arg in argv if argv is not None else sys.argv:
        found = re.search(r"(?:^|\.)(\w+)\.service(?::\w+)?$", arg)
        if found:
            return found.group(1)
    return "nameko-{}".format(os.getpid())


class ServiceLogHandler(logging.Handler):
    """Appends to ``<directory>/<service><suffix>``; does nothing without a directory.

    Configured next to the stdout handlers, so that setting ``LOG_DIR`` adds
    files without taking the terminal's output away. Several processes of one
    service append to the same file; each record is a single write.
    """

    def __init__(self, directory="", suffix=".log", level=logging.NOTSET):
        super().__init__(level)
        self.path = None
        self._stream = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self.path = os.path.join(directory, service_name_from_argv() + suffix)

    def handle(self, record):
        # without a directory, skip the filters too (masking is a regex per record)
        return super().handle(record) if self.path is not None else False

    def emit(self, record):
        try:
            text = self.format(record) + "\n"
            if self._stream is None:
                self._stream = open(self.path, "a", encoding="utf-8")
            self._stream.write(text)
            self._stream.flush()
        except Exception:
            self.handleError(record)

    def close(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()
