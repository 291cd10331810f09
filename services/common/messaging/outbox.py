"""Transactional outbox: events are rows first, messages second.

A service writes the events a change causes into its own ``outbox`` table in
the same transaction as the change. After that transaction commits, a
publisher thread sends them to RabbitMQ with publisher confirms and only then
marks them sent. A relay loop sends whatever is left unsent (a crash between
commit and publish, the broker down) once it is older than a grace period.
A row may therefore be published more than once; consumers are idempotent.

Publishing is batched: everything committed since the last batch goes out
on one channel in confirm mode, in one socket write, and the batch waits once
for the broker's confirms, instead of one round trip per event (under load,
each round trip also waited for a turn among busy green threads, and the
outbox fell behind). Rows stay "in flight" from commit until marked sent,
and the relay leaves those alone, so a slow publisher is not doubled by the
relay. Marking sent is itself batched, one UPDATE per ``MARK_INTERVAL``
rather than per batch: a crash in between only means those events go out
again.

A confirm is not a delivery: RabbitMQ confirms a message that no queue took.
Events are published ``mandatory``; one that reaches no queue comes back
(``basic.return``, before its ack) and is treated as not sent. Its row stays
unsent, and its event type is *unroutable*: the relay leaves that type alone
for a backoff that doubles from ``OUTBOX_RELAY_INTERVAL`` up to
``RETRY_BACKOFF_MAX``, then tries again, until a consumer has declared its
queue. Operators see them in the ``outbox_unroutable_events`` metric and in
``list_waiting_events`` (``./run.sh dlq waiting SERVICE``). Event types a
service declares ``optional`` have no consumer by design: a return of one
counts as sent.
"""
import logging
import time
from datetime import timedelta

import eventlet
from eventlet.event import Event
from eventlet.queue import Empty, LightQueue, Queue
from eventlet.semaphore import Semaphore
from kombu import Connection, Producer
from nameko.constants import AMQP_URI_CONFIG_KEY, PERSISTENT
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from sqlalchemy import (
    JSON, BigInteger, Column, DateTime, Integer, String, bindparam, delete, event, insert, select, update,
)
from sqlalchemy.orm import Session as OrmSession

from services.common.observability import telemetry
from services.common.messaging.brokers import ssl_options
from services.common.observability.correlation import CONTEXT_KEY
from services.common.db.database import read_only, shared_engine
from services.common.db.pgwire import DEFERRABLE
from services.common.messaging.events import as_utc, new_event, utcnow
from services.common.messaging.wire import coalesced_writes, drop
from services.common.settings import PlatformSettings

log = logging.getLogger(__name__)

BATCH_SIZE = 200
RETENTION = timedelta(days=1)
FORGET_INTERVAL = 60  # seconds between clean-ups of sent rows: a delete per relay tick buys nothing
STOP_TIMEOUT = 10
CONFIRM_TIMEOUT = 10  # seconds a batch has to be published and confirmed, its channel opened if need be
CLOSE_TIMEOUT = 2  # seconds the broker has to answer a connection close before the socket is just dropped
MARK_INTERVAL = 0.1  # seconds confirmed events may wait to be marked sent, together


STAGED = "outbox"  # session.info key: (outbox, message) pairs to publish once the session commits


# Listeners on the Session class, registered once: registering them per
# session (and removing them after) cost more than the rest of staging.
@event.listens_for(OrmSession, "after_commit")
def _publish_staged(session):
    for outbox, message in session.info.pop(STAGED, ()):
        outbox._committed(message)


@event.listens_for(OrmSession, "after_rollback")
def _drop_staged(session):
    session.info.pop(STAGED, None)


class OutboxMixin:
    """Columns of the outbox table; each service maps it onto its own base."""

    __tablename__ = "outbox"

    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_id = Column(String(36), nullable=False, unique=True)
    event_type = Column(String(100), nullable=False)
    body = Column(JSON, nullable=False)
    correlation_id = Column(String(64), nullable=True)
    # W3C trace context of the transaction that wrote the row (telemetry.py)
    traceparent = Column(String(telemetry.MAX_TRACEPARENT), nullable=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, index=True)
    published_at = Column(DateTime(timezone=True), nullable=True, index=True)


def _context(context):
    """A staged event's ``(correlation id, traceparent)``; a bare correlation id (or None) has no trace."""
    return context if isinstance(context, tuple) else (context, None)


def _headers(context):
    """Nameko's correlation header from a row's (correlation id, traceparent)."""
    correlation_id = _context(context)[0]
    return {"nameko." + CONTEXT_KEY: correlation_id} if correlation_id else {}


class PublishFailed(Exception):
    pass


class BatchPublisher:
    """Publishes a batch of events and waits once for all their confirms.

    One connection and one channel in confirm mode, used by one green thread
    at a time (the outbox serialises callers). Any failure drops the
    connection; the next batch opens a new one.
    """

    def __init__(self, amqp_uri, exchange, confirm_timeout=CONFIRM_TIMEOUT, ssl=None):
        self.amqp_uri = amqp_uri
        self.ssl = ssl
        self.exchange = exchange
        self.confirm_timeout = confirm_timeout
        self._connection = None
        self._producer = None
        self._next_tag = 1
        self._unconfirmed = {}  # delivery tag -> event id
        self._confirmed = []
        self._nacked = []
        self._returned_ids = set()  # returned by the broker, their acks not yet in
        self._returned = []  # (event id, routing key) of this batch that reached no queue
        self._routing_keys = {}  # event id -> routing key, for the batch in flight

    def _ensure_channel(self):
        if self._connection is not None:
            return
        connection = Connection(self.amqp_uri, connect_timeout=5, ssl=ssl_options({"AMQP_SSL": self.ssl}))
        try:
            connection.connect()
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            # without a listener amqp raises on a basic.return; with one, it
            # arrives before the message's ack, which then must not count
            channel.events["basic_return"].add(self._on_return)
            self.exchange(channel).declare()
        except Exception:
            connection.release()
            raise
        self._connection = connection
        # declared above: kombu would otherwise declare it again on the first
        # publish, a round trip that cannot happen while frames are coalesced
        self._producer = Producer(channel, exchange=self.exchange, serializer="json", auto_declare=False)
        self._next_tag = 1
        self._unconfirmed = {}

    def _settle(self, tag, multiple, into):
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        for t in tags:
            event_id = self._unconfirmed.pop(t, None)
            if event_id is None:
                continue
            if event_id in self._returned_ids:  # acked, but no queue took it
                self._returned_ids.discard(event_id)
                self._returned.append((event_id, self._routing_keys.get(event_id)))
            else:
                into.append(event_id)

    def _on_return(self, exc, exchange, routing_key, message):
        event_id = (message.properties or {}).get("message_id")
        if event_id is not None:
            self._returned_ids.add(event_id)

    def _on_ack(self, tag, multiple):
        self._settle(tag, multiple, self._confirmed)

    def _on_nack(self, tag, multiple):
        self._settle(tag, multiple, self._nacked)

    def publish(self, messages):
        """Publish (routing key, body, headers) triples; return the confirmed event ids.

        Only events some queue received count as confirmed; those that
        reached no queue are in ``returned`` afterwards, as (event id,
        routing key) pairs. Raises PublishFailed (with the ids confirmed
        before the failure in ``confirmed``) if the broker could not be
        reached, nacked a message or did not confirm in time.
        """
        self._confirmed, self._nacked, self._returned = [], [], []
        self._returned_ids = set()
        self._routing_keys = {body["id"]: routing_key for routing_key, body, _ in messages}
        try:
            # opening the channel waits for the broker too: a broker that went
            # silent (a network partition) must not hold the outbox for ever
            with eventlet.Timeout(self.confirm_timeout):
                self._ensure_channel()
                with coalesced_writes(self._connection.connection):
                    for routing_key, body, headers in messages:
                        self._unconfirmed[self._next_tag] = body["id"]
                        self._next_tag += 1
                        self._producer.publish(body, routing_key=routing_key, headers=headers, mandatory=True,
                                               message_id=body["id"], delivery_mode=PERSISTENT, retry=False)
                while self._unconfirmed:
                    self._connection.drain_events()
        except (Exception, eventlet.Timeout) as exc:
            self.close()
            error = PublishFailed("{}: {}".format(type(exc).__name__, exc) if str(exc) else type(exc).__name__)
            error.confirmed = list(self._confirmed)
            error.returned = list(self._returned)
            raise error from None
        if self._nacked:
            # the next batch gets a new channel: in one run of tests/e2e/test_cluster.py
            # (RabbitMQ 3.10) a channel went on refusing for minutes after the quorum
            # queue's new leader was elected in under a second; a connection is cheap
            self.close()
            error = PublishFailed("broker refused {} event(s)".format(len(self._nacked)))
            error.confirmed = list(self._confirmed)
            error.returned = list(self._returned)
            raise error
        return list(self._confirmed)

    @property
    def returned(self):
        """(event id, routing key) of the last batch's events that reached no queue."""
        return list(self._returned)

    def close(self):
        """Drop the connection: closed politely if the broker answers within ``CLOSE_TIMEOUT``.

        AMQP's close waits for the broker's close-ok with no timeout. A
        broker that went silent, or one closing the connection itself (its
        vhost deleted), left the caller waiting for ever: the relay after a
        failed batch, or a service being killed.
        """
        connection, self._connection = self._connection, None
        self._producer = None
        self._unconfirmed = {}
        if connection is None:
            return
        try:
            with eventlet.Timeout(CLOSE_TIMEOUT):
                connection.release()
            return
        except (Exception, eventlet.Timeout):  # already broken, or no answer
            drop(connection)


class OutboxWriter:
    """What a worker sees as ``self.outbox``."""

    def __init__(self, provider, worker_ctx):
        self._provider = provider
        self._worker_ctx = worker_ctx

    def add(self, session, event_type, data):
        """Stage an event in ``session``; it is published once that commits."""
        body = new_event(self._provider.container.service_name, event_type, data)
        correlation_id = self._worker_ctx.data.get(CONTEXT_KEY)
        traceparent = telemetry.current_traceparent(session)
        # a Core INSERT in the caller's transaction: as atomic as an ORM
        # object, without a unit-of-work flush for a row nobody reads back
        session.connection().execute(self._provider.insert_row, {
            "event_id": body["id"], "event_type": event_type, "body": body,
            "correlation_id": correlation_id, "traceparent": traceparent, "created_at": utcnow()})
        self._provider.publish_after_commit(session, (event_type, body, (correlation_id, traceparent)))
        return body

    def waiting(self, limit=100):
        """The oldest unsent events, for operators (see ``Outbox.waiting``)."""
        return self._provider.waiting(limit)


class Unroutable:
    """An event type whose events reached no queue: when, how often, when to try again."""

    def __init__(self, now):
        self.since = now
        self.attempts = 0
        self.next_try = now
        self.returned = 0


class Outbox(DependencyProvider):
    def __init__(self, declarative_base, model, optional=()):
        """``optional``: event types with no consumer by design; reaching no queue is fine for them."""
        self.declarative_base = declarative_base
        self.model = model
        self.optional = frozenset(optional)
        self.unroutable = {}  # event type -> Unroutable, in this process
        self._pending = Queue()
        self._inflight = set()  # committed, handed to the publisher, not yet marked sent
        self._unmarked = []  # confirmed by the broker, to be marked sent with the next lot
        self._marked_at = float("-inf")
        self._publishing = Semaphore()
        self._running = False
        self._publisher_done = None
        self._relay = None
        self._relay_stop = LightQueue()
        self._forgotten_at = float("-inf")

    def setup(self):
        config = self.container.config
        table = self.model.__table__
        # built once: every event runs it; on PostgreSQL it rides with the transaction's next statement or
        # its COMMIT (services.common.db.pgwire): nothing reads its result, nor its id (inline: no RETURNING)
        self.insert_row = insert(table).inline().execution_options(**{DEFERRABLE: True})
        self.mark_sent = (update(table).where(table.c.event_id.in_(bindparam("event_ids", expanding=True)))
                          .values(published_at=bindparam("now")).execution_options(**{DEFERRABLE: True}))
        self.exchange = get_event_exchange(self.container.service_name, config)
        self.publisher = BatchPublisher(config[AMQP_URI_CONFIG_KEY], self.exchange, ssl=ssl_options(config))
        # the publisher's marking and the relay, at once at most
        self.shared = shared_engine(self.container, self.declarative_base.__name__, 2)
        settings = PlatformSettings.from_config(config)
        self.relay_interval = settings.outbox_relay_interval
        self.grace = timedelta(seconds=settings.outbox_grace)
        self.unroutable_backoff_max = max(self.relay_interval, settings.retry_backoff_max)

    def start(self):
        self._running = True
        self._publisher_done = Event()
        self.container.spawn_managed_thread(self._publish_loop)
        self._relay = self.container.spawn_managed_thread(self._relay_loop)

    def stop(self):
        # Let the publisher send what committed workers left behind; anything
        # still unsent stays in the table for the relay of the next start.
        # The relay finishes its round rather than being killed mid-publish
        # (nameko kills, with a warning, any managed thread still running).
        self._running = False
        self._pending.put(None)
        self._relay_stop.put(None)
        with eventlet.Timeout(STOP_TIMEOUT, False):
            if self._publisher_done is not None:
                self._publisher_done.wait()
            if self._relay is not None:
                self._relay.wait()
        self.publisher.close()
        self.shared.release()

    def kill(self):
        self._running = False
        self.publisher.close()
        self.shared.release()

    @property
    def engine(self):
        return self.shared.engine

    @property
    def Session(self):
        return self.shared.sessions()

    def get_dependency(self, worker_ctx):
        return OutboxWriter(self, worker_ctx)

    def publish_after_commit(self, session, message):
        session.info.setdefault(STAGED, []).append((self, message))

    def _committed(self, message):
        self._inflight.add(message[1]["id"])
        self._pending.put(message)

    # publishing -----------------------------------------------------------

    def _publish_loop(self):
        """Publish committed events in batches until told to stop (None)."""
        stopping = False
        try:
            while not stopping:
                batch = []
                try:
                    message = self._pending.get(timeout=MARK_INTERVAL if self._unmarked else None)
                except Empty:  # quiet: mark what was confirmed rather than wait for more
                    self._mark_unmarked()
                    continue
                while True:
                    if message is None:
                        stopping = True
                    else:
                        batch.append(message)
                    if len(batch) >= BATCH_SIZE:
                        break
                    try:
                        message = self._pending.get_nowait()
                    except Empty:
                        break
                if batch:
                    confirmed = self._publish(batch)
                    self._unmarked.extend(confirmed)
                    # the relay may take what the broker did not confirm
                    self._inflight.difference_update({body["id"] for _, body, _ in batch} - set(confirmed))
                if stopping or len(self._unmarked) >= BATCH_SIZE \
                        or time.monotonic() - self._marked_at >= MARK_INTERVAL:
                    self._mark_unmarked()
        finally:
            self._publisher_done.send()

    def _mark_unmarked(self):
        marked, self._unmarked = self._unmarked, []
        self._mark_sent(marked)
        self._inflight.difference_update(marked)
        self._marked_at = time.monotonic()

    def _publish(self, batch):
        """Publish ``batch``; return the ids of the events the broker confirmed and some queue took."""
        with self._publishing:
            spans = telemetry.PublishSpans([(body["id"], event_type, self.exchange.name, _context(context)[1])
                                            for event_type, body, context in batch])
            try:
                confirmed = self.publisher.publish(
                    [(event_type, body, dict(_headers(context), **spans.headers(body["id"])))
                     for event_type, body, context in batch])
                returned = self.publisher.returned
            except PublishFailed as exc:  # the relay will send the rest later
                log.warning("outbox: publishing %d event(s) failed, %d confirmed, the rest left for the relay: %s",
                            len(batch), len(exc.confirmed), exc)
                confirmed, returned = exc.confirmed, exc.returned
            spans.end(confirmed)
        return confirmed + self._note_routing(batch, confirmed, returned)

    def _note_routing(self, batch, confirmed, returned):
        """Track which event types reach no queue; return the returned ids that count as sent (optional types)."""
        if not returned and not self.unroutable:  # the usual case: nothing to track
            return []
        now = time.monotonic()
        confirmed_ids = set(confirmed)
        routed_types = {event_type for event_type, body, _ in batch if body["id"] in confirmed_ids}
        for event_type in routed_types & set(self.unroutable):
            state = self.unroutable.pop(event_type)
            log.info("outbox: %s events reach a queue again (after %d returned over %.0fs); "
                     "the waiting ones go out with the next relay", event_type, state.returned, now - state.since)
        sent_anyway, by_type = [], {}
        for event_id, routing_key in returned:
            if routing_key in self.optional:
                sent_anyway.append(event_id)  # no consumer by design
            else:
                by_type.setdefault(routing_key, []).append(event_id)
        for event_type, event_ids in by_type.items():
            state = self.unroutable.get(event_type)
            if state is None:
                state = self.unroutable[event_type] = Unroutable(now)
            state.attempts += 1
            state.returned += len(event_ids)
            delay = min(self.unroutable_backoff_max, self.relay_interval * 2 ** min(state.attempts - 1, 20))
            state.next_try = now + delay
            log.warning("outbox: %d %s event(s) reached no queue (no consumer has declared one yet); "
                        "kept unsent, next try in %.1fs", len(event_ids), event_type, delay)
        return sent_anyway

    def unroutable_types(self):
        """Event types whose events reached no queue on the last try, with what is known about them."""
        now = time.monotonic()
        return {event_type: {"since_seconds": round(now - state.since, 3), "attempts": state.attempts,
                             "returned": state.returned, "next_try_in_seconds": round(max(0.0, state.next_try - now), 3)}
                for event_type, state in list(self.unroutable.items())}

    def waiting(self, limit=100):
        """The oldest unsent events (type, id, age, and whether they are unroutable), for operators."""
        now = utcnow()
        unroutable = self.unroutable_types()
        with self.Session() as session:
            rows = read_only(session).execute(
                select(self.model.event_id, self.model.event_type, self.model.created_at)
                .where(self.model.published_at.is_(None))
                .order_by(self.model.id)
                .limit(limit)
            ).all()
        return [{"event_id": row.event_id, "event_type": row.event_type,
                 "age_seconds": round(max(0.0, (now - as_utc(row.created_at)).total_seconds()), 3),
                 "unroutable": unroutable.get(row.event_type)} for row in rows]

    def _mark_sent(self, event_ids):
        if not event_ids:
            return
        try:
            with self.engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # A lost mark only sends the events again (consumers dedupe), so this
                    # commit need not wait for the WAL flush; order writes always do.
                    connection.exec_driver_sql("SET LOCAL synchronous_commit = off",
                                               execution_options={DEFERRABLE: True})
                connection.execute(self.mark_sent, {"event_ids": list(event_ids), "now": utcnow()})
        except Exception as exc:  # published twice at worst; consumers dedupe
            log.warning("outbox: marking %d events sent failed: %s", len(event_ids), exc)

    # relay ------------------------------------------------------------------

    def _relay_loop(self):
        while self._running:
            try:
                return self._relay_stop.get(timeout=self.relay_interval)  # told to stop
            except Empty:
                pass
            try:
                self.relay_once()
            except Exception as exc:
                log.warning("outbox relay: %s", exc)

    def relay_once(self, grace=None):
        """Publish rows still unsent after the grace period; return how many."""
        cutoff = utcnow() - (self.grace if grace is None else grace)
        now = time.monotonic()
        # types that reached no queue wait out their backoff: retried, not hot
        backing_off = [event_type for event_type, state in list(self.unroutable.items()) if state.next_try > now]
        query = (select(self.model.event_type, self.model.body, self.model.correlation_id, self.model.traceparent)
                 .where(self.model.published_at.is_(None), self.model.created_at <= cutoff))
        if backing_off:
            query = query.where(self.model.event_type.not_in(backing_off))
        with self.Session() as session:
            rows = read_only(session).execute(query.order_by(self.model.id).limit(BATCH_SIZE)).all()
        # rows the publisher already holds are late, not lost
        rows = [row for row in rows if row.body["id"] not in self._inflight]
        if rows:
            log.info("outbox relay: publishing %d unsent events", len(rows))
            self._mark_sent(self._publish([(row.event_type, row.body, (row.correlation_id, row.traceparent))
                                           for row in rows]))
        if time.monotonic() - self._forgotten_at >= FORGET_INTERVAL:
            self._forget_old()
            self._forgotten_at = time.monotonic()
        return len(rows)

    def _forget_old(self):
        with self.Session.begin() as session:
            session.execute(
                delete(self.model).where(
                    self.model.published_at.is_not(None),
                    self.model.published_at < utcnow() - RETENTION,
                )
            )
