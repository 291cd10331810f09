"""Transactional outbox: events are rows first, messages second.

A service writes the events a change causes into its own ``outbox`` table in
the same transaction as the change. After that transaction commits, a
publisher thread sends them to RabbitMQ with publisher confirms and only then
marks them sent. A relay loop sends whatever is left unsent (a crash between
commit and publish, the broker down) once it is older than a grace period.
A row may therefore be published more than once; consumers are idempotent.
"""
import logging
from datetime import timedelta

import eventlet
from eventlet.event import Event
from eventlet.queue import Empty, Queue
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, String, event, select, update, delete
from sqlalchemy.orm import sessionmaker

from .correlation import CONTEXT_KEY
from .db import database_uri, make_engine
from .events import new_event, utcnow

log = logging.getLogger(__name__)

BATCH_SIZE = 200
RETENTION = timedelta(days=1)
STOP_TIMEOUT = 10


class OutboxMixin:
    """Columns of the outbox table; each service maps it onto its own base."""

    __tablename__ = "outbox"

    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_id = Column(String(36), nullable=False, unique=True)
    event_type = Column(String(100), nullable=False)
    body = Column(JSON, nullable=False)
    correlation_id = Column(String(64), nullable=True)
    created_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, index=True)
    published_at = Column(DateTime(timezone=True), nullable=True, index=True)


def _headers(correlation_id):
    return {"nameko." + CONTEXT_KEY: correlation_id} if correlation_id else {}


class OutboxWriter:
    """What a worker sees as ``self.outbox``."""

    def __init__(self, provider, worker_ctx):
        self._provider = provider
        self._worker_ctx = worker_ctx

    def add(self, session, event_type, data):
        """Stage an event in ``session``; it is published once that commits."""
        body = new_event(self._provider.container.service_name, event_type, data)
        correlation_id = self._worker_ctx.data.get(CONTEXT_KEY)
        session.add(
            self._provider.model(
                event_id=body["id"], event_type=event_type, body=body, correlation_id=correlation_id
            )
        )
        self._provider.publish_after_commit(session, (event_type, body, correlation_id))
        return body


class Outbox(DependencyProvider):
    def __init__(self, declarative_base, model):
        self.declarative_base = declarative_base
        self.model = model
        self._pending = Queue()
        self._running = False
        self._publisher_done = None

    def setup(self):
        config = self.container.config
        self.exchange = get_event_exchange(self.container.service_name, config)
        self.publisher = Publisher(config[AMQP_URI_CONFIG_KEY], declare=[self.exchange])
        uri = database_uri(config, self.container.service_name, self.declarative_base.__name__)
        self.engine = make_engine(uri, max_workers=2)
        self.Session = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.relay_interval = float(config.get("OUTBOX_RELAY_INTERVAL", 2))
        self.grace = timedelta(seconds=float(config.get("OUTBOX_GRACE", 3)))

    def start(self):
        self._running = True
        self._publisher_done = Event()
        self.container.spawn_managed_thread(self._publish_loop)
        self.container.spawn_managed_thread(self._relay_loop)

    def stop(self):
        # Let the publisher send what committed workers left behind; anything
        # still unsent stays in the table for the relay of the next start.
        self._running = False
        self._pending.put(None)
        with eventlet.Timeout(STOP_TIMEOUT, False):
            self._publisher_done.wait()
        self.engine.dispose()

    def kill(self):
        self._running = False
        self.engine.dispose()

    def get_dependency(self, worker_ctx):
        return OutboxWriter(self, worker_ctx)

    def publish_after_commit(self, session, message):
        staged = session.info.setdefault("outbox", [])
        if not staged:
            event.listen(session, "after_commit", self._on_commit, once=True)
            event.listen(session, "after_rollback", self._on_rollback, once=True)
        staged.append(message)

    def _on_commit(self, session):
        for message in session.info.pop("outbox", []):
            self._pending.put(message)

    def _on_rollback(self, session):
        session.info.pop("outbox", None)

    # publishing -----------------------------------------------------------

    def _publish_loop(self):
        """Publish committed events in batches until told to stop (None)."""
        stopping = False
        try:
            while not stopping:
                batch = []
                message = self._pending.get()
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
                    self._publish_and_mark(batch)
        finally:
            self._publisher_done.send()

    def _publish_and_mark(self, batch):
        sent = []
        for event_type, body, correlation_id in batch:
            try:
                self.publisher.publish(
                    body,
                    exchange=self.exchange,
                    routing_key=event_type,
                    message_id=body["id"],
                    extra_headers=_headers(correlation_id),
                    retry_policy={"max_retries": 1},
                )
            except Exception as exc:  # the relay will send it later
                log.warning("outbox: publishing %s %s failed, left for the relay: %s",
                            event_type, body["id"], exc)
                break
            sent.append(body["id"])
        self._mark_sent(sent)

    def _mark_sent(self, event_ids):
        if not event_ids:
            return
        try:
            with self.Session.begin() as session:
                session.execute(
                    update(self.model)
                    .where(self.model.event_id.in_(event_ids))
                    .values(published_at=utcnow())
                )
        except Exception as exc:  # published twice at worst; consumers dedupe
            log.warning("outbox: marking %d events sent failed: %s", len(event_ids), exc)

    # relay ------------------------------------------------------------------

    def _relay_loop(self):
        while self._running:
            eventlet.sleep(self.relay_interval)
            if not self._running:
                return
            try:
                self.relay_once()
            except Exception as exc:
                log.warning("outbox relay: %s", exc)

    def relay_once(self, grace=None):
        """Publish rows still unsent after the grace period; return how many."""
        cutoff = utcnow() - (self.grace if grace is None else grace)
        with self.Session() as session:
            rows = session.execute(
                select(self.model.event_type, self.model.body, self.model.correlation_id)
                .where(self.model.published_at.is_(None), self.model.created_at <= cutoff)
                .order_by(self.model.id)
                .limit(BATCH_SIZE)
            ).all()
        if rows:
            log.info("outbox relay: publishing %d unsent events", len(rows))
            self._publish_and_mark([tuple(row) for row in rows])
        self._forget_old()
        return len(rows)

    def _forget_old(self):
        with self.Session.begin() as session:
            session.execute(
                delete(self.model).where(
                    self.model.published_at.is_not(None),
                    self.model.published_at < utcnow() - RETENTION,
                )
            )

    def pending_count(self):
        with self.Session() as session:
            return session.query(self.model).filter(self.model.published_at.is_(None)).count()
