"""Event consumers that are safe under at-least-once delivery.

``event_handler`` acks a message only after its handler returned. When the
handler raises, the message is scheduled for another attempt after an
exponential backoff with jitter (through a per-queue retry queue whose
messages expire back into the original queue); a message that fails
``MAX_DELIVERY_ATTEMPTS`` times, or is malformed, goes to the service's
dead-letter queue with the reason, to be listed and replayed later. If even
that publish fails, the message is requeued: it is never dropped. A failure
that means the database is unavailable (see ``errors.is_unavailable``) is not
the message's fault: it is retried at the capped backoff for as long as the
outage lasts, and never dead-lettered for it.

``first_delivery`` is the other half: each handler records the ids of the
events it handled in the same transaction as their effect, so a redelivered
event changes nothing twice.
"""
import functools
import logging
import random
from datetime import datetime, timedelta, timezone

import amqp.exceptions
import eventlet
from kombu import Queue
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.messaging import QueueConsumer
from nameko.timer import timer
from sqlalchemy import Column, DateTime, String, delete, select, tuple_

from .brokers import redacted
from .errors import is_unavailable
from .events import MalformedMessage, utcnow
from .queues import queue_arguments
from .wire import coalesced_writes

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-delivery-attempt"
# what a lost broker connection raises: amqp's ConnectionError, or a socket error
CONNECTION_ERRORS = (amqp.exceptions.ConnectionError, OSError)
STOP_POLL = 0.2  # seconds a consumer waits for a message before checking whether it should stop
DEFAULT_INBOX_RETENTION_DAYS = 7
INBOX_PURGE_INTERVAL = 3600  # seconds
INBOX_PURGE_BATCH = 1000


def dead_letter_queue_name(service_name):
    return "{}.dead-letters".format(service_name)


def retry_queue(queue_name, config=None):
    """Messages wait here until their TTL sends them back to ``queue_name``."""
    return Queue(
        "{}.retry".format(queue_name),
        durable=True,
        queue_arguments=queue_arguments(config, {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue_name,
        }),
    )


def backoff_seconds(attempt, base, cap):
    """Full-jitter exponential backoff for the given (1-based) failed attempt."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


class SafeAckQueueConsumer(QueueConsumer):
    """nameko's queue consumer, but an ack that meets a dead connection does not kill the service,
    and a stop does not wait seconds for the next message.

    nameko 2.14 ignores only amqp's ``ConnectionError`` when acking; a socket
    the broker has just reset (RabbitMQ shutting down while a worker finishes)
    raises ``ConnectionResetError`` instead, which ends the worker with an
    error and so kills the whole container. The broker gives an unacked
    message of a closed connection to the next consumer anyway, and handlers
    skip events they already applied, so losing the ack is harmless. Event
    handlers, RPC entrypoints and RPC reply listeners all consume through it
    (see ``services.common.rpc``).

    Acks wait for the end of the event loop's turn and leave together, in one
    socket write: under load, messages arrive in bursts of up to the prefetch
    count, and acked one by one each ack costs this process a system call
    and the broker a wake-up.
    """

    def __init__(self):
        super().__init__()
        self._acks = []  # messages handled, waiting for the next flush of acks
        self._ack_flush = None

    def consume(self, limit=None, timeout=None, safety_interval=STOP_POLL, **kwargs):
        # kombu waits up to ``safety_interval`` for a message before looking
        # at requests to stop; nameko's 1 s, paid twice, made every stop take
        # over 2 s even when idle
        return super().consume(limit=limit, timeout=timeout, safety_interval=safety_interval, **kwargs)

    def ack_message(self, message):
        """Ack once the workers ready now have finished, all in one socket write.

        The ack still follows the handling; it only waits for the end of the
        event loop's current turn, so that the acks of messages that arrived
        together leave together.
        """
        self._acks.append(message)
        if self._ack_flush is None:
            self._ack_flush = eventlet.spawn(self._flush_acks)

    def _flush_acks(self):
        self._ack_flush = None
        messages, self._acks = self._acks, []
        if not messages:
            return
        try:
            with coalesced_writes(messages[0].channel.connection):
                for message in messages:
                    super().ack_message(message)
        except CONNECTION_ERRORS as exc:
            log.warning("could not ack %d message(s), the broker connection is gone (%s: %s); "
                        "they will be delivered again", len(messages), type(exc).__name__, exc)
        except Exception:  # a bug: say so loudly; unacked, the messages come back with the connection
            log.exception("could not ack %d message(s)", len(messages))

    def stop(self):
        self._flush_acks()  # before the connection closes: acks not sent are redeliveries
        super().stop()

    def on_connection_error(self, exc, interval):
        # nameko's own warning redacts only the first password of a failover list (brokers.py)
        log.warning("Error connecting to broker at %s (%s). Retrying in %s seconds.",
                    redacted(self.amqp_uri), exc, interval)

    def requeue_message(self, message):
        try:
            super().requeue_message(message)
        except CONNECTION_ERRORS as exc:
            log.warning("could not requeue a message of %s, the broker connection is gone (%s: %s); "
                        "the broker requeues it itself", message.delivery_info.get("routing_key"),
                        type(exc).__name__, exc)


class DeadLetteringQueueConsumer(SafeAckQueueConsumer):
    """The event handlers' consumer: an undecodable message is dead-lettered.

    kombu acks and drops a message whose body it cannot decode (bad JSON, a
    content type that is not accepted) after logging it; here it goes to the
    dead-letter queue of the handler whose queue it came from, like any other
    malformed message, so it can be inspected.
    """

    def on_decode_error(self, message, exc):
        provider = self._provider_for(message)
        if provider is None:
            return super().on_decode_error(message, exc)
        try:
            provider.dead_letter(message, MalformedMessage(
                "undecodable body ({}): {}".format(message.content_type, exc)))
        except Exception:
            log.exception("could not dead-letter an undecodable message of %s; requeueing it",
                          provider.queue.name)
            self.requeue_message(message)
            return
        self.ack_message(message)

    def _provider_for(self, message):
        tag = message.delivery_info.get("consumer_tag")
        for provider, consumer in list(self._consumers.items()):
            if tag in consumer._active_tags.values() and hasattr(provider, "dead_letter"):
                return provider
        return None


class ReliableEventHandler(EventHandler):
    queue_consumer = DeadLetteringQueueConsumer()

    def setup(self):
        super().setup()
        config = self.container.config
        # nameko's EventHandler.setup builds the Queue with no arguments and offers no hook
        self.queue.queue_arguments = queue_arguments(config, self.queue.queue_arguments)
        self.max_attempts = int(config.get("MAX_DELIVERY_ATTEMPTS", 5))
        self.backoff_base = float(config.get("RETRY_BACKOFF_BASE", 0.5))
        self.backoff_max = float(config.get("RETRY_BACKOFF_MAX", 30))
        self.dead_letters = Queue(dead_letter_queue_name(self.container.service_name), durable=True,
                                  queue_arguments=queue_arguments(config))
        self.publisher = Publisher(config[AMQP_URI_CONFIG_KEY])

    def handle_message_processed(self, message, result=None, exc_info=None):
        if exc_info is not None:
            try:
                self._retry_or_dead_letter(message, exc_info[1])
            except Exception:
                log.exception("could not reschedule a failed message of %s; requeueing it", self.queue.name)
                self.queue_consumer.requeue_message(message)
                return
        self.queue_consumer.ack_message(message)

    def _retry_or_dead_letter(self, message, exc):
        headers = dict(message.headers or {})
        attempt = int(headers.get(ATTEMPT_HEADER, 1))
        permanent = isinstance(exc, MalformedMessage)
        # A database that is down fails every attempt through no fault of the
        # message: keep retrying at the capped backoff instead of dead-lettering.
        waiting = is_unavailable(exc)
        if not permanent and (attempt < self.max_attempts or waiting):
            delay = backoff_seconds(min(attempt, self.max_attempts), self.backoff_base, self.backoff_max)
            headers[ATTEMPT_HEADER] = attempt + 1
            log.warning("%s failed attempt %d/%d (%s: %s); retrying in %.2fs",
                        self.queue.name, attempt, self.max_attempts, type(exc).__name__, exc, delay)
            config = self.container.config if self.container is not None else None  # unbound in unit tests
            target = retry_queue(self.queue.name, config)
            self._republish(message, target, headers, expiration=delay)
            return
        self.dead_letter(message, exc, headers, attempt)

    def dead_letter(self, message, exc, headers=None, attempt=1):
        """Park ``message`` in the service's dead-letter queue, saying why."""
        headers = dict(message.headers or {}) if headers is None else headers
        headers.update({
            "x-original-queue": self.queue.name,
            "x-original-exchange": message.delivery_info.get("exchange", ""),
            "x-original-routing-key": message.delivery_info.get("routing_key", ""),
            "x-error-type": type(exc).__name__,
            "x-error-message": str(exc)[:1000],
            "x-attempts": attempt,
            "x-dead-lettered-at": datetime.now(timezone.utc).isoformat(),
        })
        log.error("%s: message dead-lettered after %d attempt(s): %s: %s",
                  self.queue.name, attempt, type(exc).__name__, exc)
        self._republish(message, self.dead_letters, headers)

    def _republish(self, message, queue, headers, expiration=None):
        self.publisher.publish(
            message.body,
            exchange="",
            routing_key=queue.name,
            declare=[queue],
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            expiration=expiration,
            message_id=message.properties.get("message_id"),
        )


event_handler = ReliableEventHandler.decorator


class ProcessedEventMixin:
    """The inbox: which events each handler has already applied."""

    __tablename__ = "processed_events"

    event_id = Column(String(36), primary_key=True)
    consumer = Column(String(100), primary_key=True)
    processed_at = Column(DateTime(timezone=True), nullable=False, default=utcnow, index=True)


class InboxRetention:
    """A service mixin: forgets inbox rows older than ``INBOX_RETENTION_DAYS``.

    An inbox row only has to outlive the redeliveries of its event: a lost
    ack, a retry, a broker restart, all within minutes. Kept for ever, the
    table grows by a row per event per consumer. Deleting in small batches
    keeps each write transaction (SQLite's one write lock) short. The service
    declares ``inbox`` (its ProcessedEvent model), ``db`` and ``config``.
    """

    @timer(interval=INBOX_PURGE_INTERVAL)
    def forget_old_inbox_entries(self):
        days = float(self.config.get("INBOX_RETENTION_DAYS") or DEFAULT_INBOX_RETENTION_DAYS)
        cutoff = utcnow() - timedelta(days=days)
        table = self.inbox.__table__
        oldest = (select(table.c.event_id, table.c.consumer).where(table.c.processed_at < cutoff)
                  .limit(INBOX_PURGE_BATCH))
        removed = 0
        while True:
            with self.db.get_session() as session:
                keys = session.execute(oldest).all()
                if keys:
                    session.execute(delete(table).where(tuple_(table.c.event_id, table.c.consumer).in_(keys)))
            removed += len(keys)
            if len(keys) < INBOX_PURGE_BATCH:
                break
            eventlet.sleep(0)  # let the service's own work in between batches
        if removed:
            log.info("inbox: forgot %d entries handled more than %g days ago", removed, days)
        return removed


@functools.lru_cache(maxsize=None)
def _insert_if_new(table, dialect):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing(index_elements=["event_id", "consumer"])


def first_delivery(session, model, event, consumer):
    """Record ``event`` as handled by ``consumer``; False if it already was.

    Call it inside the transaction that applies the event's effect. It is one
    ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL): no row
    inserted means a delivery already committed. A concurrent delivery of the
    same event in another transaction waits on the key (PostgreSQL) or the
    write lock (SQLite) and then sees the committed row, so exactly one
    applies the effect. Other databases fall back to read-then-add.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # on the session's own connection (same transaction), with a statement
        # built once: this runs for every event every consumer handles
        inserted = session.connection().execute(
            _insert_if_new(model.__table__, dialect),
            {"event_id": event.id, "consumer": consumer, "processed_at": utcnow()},
        ).rowcount
        if not inserted:
            log.info("%s: event %s (%s) already handled; skipped", consumer, event.id, event.type)
        return bool(inserted)
    seen = session.execute(
        select(model.event_id).where(model.event_id == event.id, model.consumer == consumer)
    ).first()
    if seen:
        log.info("%s: event %s (%s) already handled; skipped", consumer, event.id, event.type)
        return False
    session.add(model(event_id=event.id, consumer=consumer))
    return True
