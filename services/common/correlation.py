"""Correlation ids: one id follows a request through HTTP, RPC, events and logs.

Nameko copies a worker's context data into the headers of every RPC call and
event it makes (as ``nameko.<key>``) and back into the context of the worker
that handles them, so storing the id under ``correlation_id`` in the context
is enough for it to travel.  The outbox stores it with each row for the same
reason.  This dependency also makes it visible to log records of the worker's
green thread.
"""
import logging
import threading
import uuid

from nameko.extensions import DependencyProvider

CONTEXT_KEY = "correlation_id"
HTTP_HEADER = "X-Request-ID"

_current = threading.local()  # green-thread local once eventlet has patched


def new_correlation_id():
    return uuid.uuid4().hex


def current_correlation_id():
    return getattr(_current, "value", None)


class CorrelationId(DependencyProvider):
    """Makes sure every worker has a correlation id and exposes it to logging."""

    @staticmethod
    def _ensure(worker_ctx):
        if not worker_ctx.data.get(CONTEXT_KEY):
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
