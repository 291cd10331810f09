"""The unit of work: one transaction, the inbox check and the outbox, together.

Every change a service makes follows the same steps: open a session, (for an
event) record the delivery in the inbox so a redelivery changes nothing
twice, apply the effect, stage the events it causes in the outbox, commit.
``UnitOfWork`` owns those steps so a use case only applies the effect:

    with self.uow as uow:
        order = store.lock_order(uow.session, order_id)
        uow.publish(events.ORDER_CANCELLED, order)

A use case that only reads says so, and on SQLite its transaction then takes
no lock (``services.common.db.read_only``); one that writes after all fails
at once rather than writing without the write lock:

    with self.uow.read_only() as uow:
        return handlers.read_order(uow, order_id)

``handles`` makes an event entrypoint that parses the event with the
consumer's read schema, opens the unit of work, checks the inbox and only
then calls the method, with the unit of work and the parsed event:

    @handles("orders", "order_created", OrderCreatedSchema())
    def reserve_stock(self, uow, event):
        handlers.reserve_stock(uow, event.data)

The unit of work uses the worker's own ``db`` and ``outbox`` dependencies, so
it behaves the same when a test replaces them (``worker_factory``); a test
that builds a worker that way gives it ``uow=Service.uow.for_service(worker)``.
"""
import functools
from contextlib import contextmanager

from nameko.extensions import DependencyProvider

from services.common.messaging.consumers import batched_event_handler, event_handler, first_deliveries, first_delivery
from services.common.observability import telemetry
from services.common.observability.correlation import (
    CONTEXT_KEY as CORRELATION_KEY, current_correlation_id, is_valid_correlation_id, new_correlation_id,
    set_current_correlation_id)
from services.common.messaging.events import parse_event
from services.common.db.database import read_only


class UnitOfWork(DependencyProvider):
    """``self.uow`` in a service: ``with self.uow as uow`` is one transaction.

    ``inbox`` is the service's ProcessedEvent model; ``db`` and ``outbox``
    name the service's database and outbox dependencies (a service without
    an outbox passes ``outbox=None``).
    """

    def __init__(self, inbox, db="db", outbox="outbox"):
        self.inbox = inbox
        self.db_attr = db
        self.outbox_attr = outbox

    def get_dependency(self, worker_ctx):
        return self.for_service(worker_ctx.service, worker_ctx)

    def for_service(self, service, worker_ctx=None):
        return Work(service, self.inbox, self.db_attr, self.outbox_attr, worker_ctx)


class NoOutbox(Exception):
    """A unit of work without an outbox was asked to publish."""


class ReadOnly(Exception):
    """A read-only unit of work was asked to write (publish, record a delivery)."""


class Work:
    """One worker's unit of work; each ``with`` is a new transaction.

    Inside it: ``session`` (the SQLAlchemy session), ``first_delivery(event,
    consumer)``, ``publish(event, data)``, and ``after_commit(fn)`` /
    ``after_rollback(fn)`` for what must happen once the outcome is known.
    It commits when the block ends normally and rolls back if it raises.
    When the COMMIT itself fails (a lost connection, say), the server may
    have applied it all the same: the ``after_rollback`` callbacks then find
    ``commit_failed`` true.
    """

    def __init__(self, service, inbox, db_attr, outbox_attr, worker_ctx=None):
        self._service = service
        self._worker_ctx = worker_ctx
        self._inbox = inbox
        self._db_attr = db_attr
        self._outbox_attr = outbox_attr
        self.session = None
        self.commit_failed = False
        self.is_read_only = False
        self._read_only_next = False
        self._on_commit = []
        self._on_rollback = []

    def read_only(self):
        """Make the next ``with`` a read-only transaction: ``with self.uow.read_only() as uow``."""
        self._read_only_next = True
        return self

    def __enter__(self):
        if self.session is not None:
            raise RuntimeError("a unit of work is not reentrant: finish one before starting the next")
        self.is_read_only, self._read_only_next = self._read_only_next, False
        self._on_commit, self._on_rollback = [], []
        self.commit_failed = False
        self._session_scope = getattr(self._service, self._db_attr).get_session()
        self.session = self._session_scope.__enter__()
        if self.is_read_only:
            read_only(self.session)  # the transaction begins here, marked
        return self

    def __exit__(self, exc_type, exc, traceback):
        on_commit, on_rollback = self._on_commit, self._on_rollback
        try:
            self._session_scope.__exit__(exc_type, exc, traceback)  # commits, or rolls back
        except BaseException:
            self.commit_failed = exc_type is None
            _run(on_rollback)
            raise
        finally:
            self.session = self._session_scope = None
        _run(on_rollback if exc_type is not None else on_commit)
        return False

    @property
    def correlation_id(self):
        """The correlation id of what is being handled: the worker's, or in a batch the event's."""
        if self._worker_ctx is not None:
            return self._worker_ctx.data.get(CORRELATION_KEY)
        return getattr(self._service, "correlation_id", None)

    @contextmanager
    def delivery(self, context):
        """Handle one event of a batch as if its message had a worker of its own.

        ``context`` is the message's context data. Inside, the correlation id
        (in log lines, stored rows, outgoing headers) is the event's, and a
        span of its own, child of the event's trace context, is current and
        stored with the events it causes; what ``after_commit`` and
        ``after_rollback`` get inside runs with the event's correlation id too.
        """
        data = self._worker_ctx.data
        worker_id = data.get(CORRELATION_KEY)
        event_id = context.get(CORRELATION_KEY)
        data[CORRELATION_KEY] = event_id if is_valid_correlation_id(event_id) else new_correlation_id()
        set_current_correlation_id(data[CORRELATION_KEY])
        try:
            with telemetry.delivery_span(self.session, self._worker_ctx, context):
                yield self
        finally:
            data[CORRELATION_KEY] = worker_id
            set_current_correlation_id(worker_id)

    def first_delivery(self, event, consumer):
        """Record ``event`` in the inbox as handled by ``consumer``; False if it already was."""
        self._writing("record a delivery")
        return first_delivery(self.session, self._inbox, event, consumer)

    def first_deliveries(self, events, consumer):
        """Record a batch's ``events`` in the inbox, in one statement; the ids not handled before."""
        self._writing("record a delivery")
        return first_deliveries(self.session, self._inbox, events, consumer)

    def publish(self, event, data):
        """Stage ``event`` (a declared ``services.<service>.events`` event, or its name) in the outbox.

        A declared event dumps ``data`` through its schema; the message goes
        out once this unit of work commits. Returns the envelope.
        """
        self._writing("publish {}".format(getattr(event, "name", event)))
        outbox = getattr(self._service, self._outbox_attr) if self._outbox_attr else None
        if outbox is None:
            raise NoOutbox("this service publishes no events")
        name, body = (event.name, event.dump(data)) if hasattr(event, "dump") else (event, data)
        return outbox.add(self.session, name, body)

    def _writing(self, what):
        if self.is_read_only:
            raise ReadOnly("a read-only unit of work cannot " + what)

    def after_commit(self, callback):
        self._on_commit.append((current_correlation_id(), callback))

    def after_rollback(self, callback):
        self._on_rollback.append((current_correlation_id(), callback))


def _run(callbacks):
    now = current_correlation_id()
    try:
        for correlation_id, callback in callbacks:
            set_current_correlation_id(correlation_id)
            callback()
    finally:
        set_current_correlation_id(now)


def handles(source, event_type, schema, inbox_name=None, uow="uow", batched=True, prepare_batch=None):
    """An event entrypoint whose method runs in a unit of work, once per event.

    The body is parsed with ``schema`` (the consumer's own read schema; a
    malformed event is dead-lettered, see ``services.common.messaging.events``), the
    delivery is recorded in the inbox under ``inbox_name`` (default: the
    method's name) and the method is called as ``method(self, uow, event)``
    inside the transaction; a redelivered event never reaches it.

    Messages that arrive together come as one ``batch`` (see
    ``BatchingEventHandler``): their events are applied one after another in
    one transaction, each under its own correlation id and trace span; if
    any of them fails, none is committed and each is handled again alone.
    Events whose effects lock rows other events share must not make two
    batches wait for each other: ``prepare_batch(uow, events)`` runs first
    in a batch's transaction and takes those locks in one global order (the
    order every handler takes them in), reading in the same statements what
    each event would otherwise read alone; ``batched=False`` hands every
    message to a worker of its own.
    """
    def decorate(method):
        consumer = inbox_name or method.__name__

        @functools.wraps(method)
        def entrypoint(self, body=None, batch=None):
            work = getattr(self, uow)
            if batch is None:
                event = parse_event(body, schema)
                with work:
                    if not work.first_delivery(event, consumer):
                        return None
                    return method(self, work, event)
            events = [(parse_event(body, schema), context) for body, context in batch]
            with work:
                fresh = work.first_deliveries([event for event, _ in events], consumer)
                todo = []
                for event, context in events:
                    if event.id in fresh:
                        fresh.discard(event.id)  # an id delivered twice is applied once
                        todo.append((event, context))
                if prepare_batch is not None:
                    prepare_batch(work, [event for event, _ in todo])
                for event, context in todo:
                    with work.delivery(context):
                        method(self, work, event)
            return None

        entrypoint.handles = (source, event_type, schema, consumer)
        return (batched_event_handler if batched else event_handler)(source, event_type)(entrypoint)
    return decorate
