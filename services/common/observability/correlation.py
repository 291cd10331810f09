"""Correlation ids: one id follows a request through HTTP, RPC, events and logs.

Nameko copies a worker's context data into the headers of every RPC call and
event it makes (as ``nameko.<key>``) and back into the context of the worker
that handles them, so storing the id under ``correlation_id`` in the context
is enough for it to travel.  The outbox stores it with each row for the same
reason.  This dependency also makes it visible to log records of the worker's
green thread.

An id that arrives from outside (the ``X-Request-ID`` header, or the
``nameko.correlation_id`` header of a message anyone on the broker may have
published) is used only if it is a short token of safe characters
(``is_valid_correlation_id``); anything else is replaced by a fresh id
before it can reach a log line, a trace line or a database column.
"""
import logging
import re
import threading
import uuid

from nameko.extensions import DependencyProvider

CONTEXT_KEY = "correlation_id"
HTTP_HEADER = "X-Request-ID"
MAX_LENGTH = 64  # the width of the correlation_id columns
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,%d}$" % MAX_LENGTH)

_current = threading.local()  # green-thread local once eventlet has patched


def new_correlation_id():
    return uuid.uuid4().hex


def is_valid_correlation_id(value):
    """1-64 of ``A-Z a-z 0-9 . _ : -``: no spaces, newlines, quotes or markup."""
    return isinstance(value, str) and _VALID.match(value) is not None


def current_correlation_id():
    return getattr(_current, "value", None)


def set_current_correlation_id(value):
    """Make ``value`` (or None) the id of this green thread's log lines, outside a worker."""
    _current.value = value


class CorrelationId(DependencyProvider):
    """Makes sure every worker has a valid correlation id and exposes it to logging.

    The id is checked in place in the worker's context data, which is what
    the outbox, nameko's outgoing headers and the tracer read.
    """

    @staticmethod
    def _ensure(worker_ctx):
        if not is_valid_correlation_id(worker_ctx.data.get(CONTEXT_KEY)):
            worker_ctx.data[CONTEXT_KEY] = new_correlation_id()
        return worker_ctx.data[CONTEXT_KEY]

    def worker_setup(self, worker_ctx):
        _current.value = self._ensure(worker_ctx)

    def worker_teardown(self, worker_ctx):
        _current.value = None

    def get_dependency(self, worker_ctx):
        return self._ensure(worker_ctx)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` to every record so formatters can print it."""

    def filter(self, record):
        record.correlation_id = current_correlation_id() or "-"
        return True
