"""Event consumers that are safe under at-least-once delivery.

``event_handler`` acks a message only after its handler returned. When the
handler raises, the message is scheduled for another attempt after an
exponential backoff, through fixed-delay retry queues (one per backoff step,
each with its own ``x-message-ttl``, whose messages expire back into the
original queue: every message in one of them waits the same time, so none is
held behind a longer one); a message that fails ``MAX_DELIVERY_ATTEMPTS``
times, or is malformed, goes to the service's dead-letter queue with the
reason, to be listed and replayed later. A failure that means the database
is unavailable (see ``errors.is_unavailable``) is not the message's fault: it is retried
at the capped backoff for as long as the outage lasts, and never
dead-lettered for it; a value the database refuses (a data error) is the
message's fault and is dead-lettered after the bounded attempts.

Retries and dead letters travel through the service's own redelivery
exchange (``<service>.redelivery``, direct, routing by queue name), never
through the default exchange: the broker lets a service user write to its
own redelivery exchange only, and that exchange is bound to that service's
queues only, so no service can put a message into another service's queue
(docs/operations.md, "Broker users").

No failure path requeues a message at once: a forged or unreadable
``x-delivery-attempt`` counts as the last attempt; if scheduling the retry
fails, the message is dead-lettered with its original headers stripped; and
if even that fails, it is requeued only after a (capped) backoff.

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
from kombu import Consumer, Exchange, Queue, binding
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY, CALL_ID_STACK_CONTEXT_KEY
from nameko.exceptions import ContainerBeingKilled
from nameko.events import EventHandler
from nameko.messaging import QueueConsumer
from nameko.timer import timer
from sqlalchemy import Column, DateTime, String, delete, select, tuple_

from services.common.messaging.brokers import redacted, ssl_options
from services.common.observability.correlation import CONTEXT_KEY as CORRELATION_KEY
from services.common.errors import is_unavailable
from services.common.messaging.events import MalformedMessage, utcnow
from services.common.messaging.queues import queue_arguments
from services.common.messaging.wire import coalesced_writes, drop
from services.common.settings import PlatformSettings

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-delivery-attempt"
# what a lost broker connection raises: amqp's ConnectionError, or a socket error
CONNECTION_ERRORS = (amqp.exceptions.ConnectionError, OSError)
STOP_POLL = 0.2  # seconds a consumer waits for a message before checking whether it should stop
KILL_TIMEOUT = 2  # seconds a killed consumer has to cancel and close politely before its socket is dropped
INBOX_PURGE_INTERVAL = 3600  # seconds
INBOX_PURGE_BATCH = 1000


def dead_letter_queue_name(service_name):
    return "{}.dead-letters".format(service_name)


def redelivery_exchange(service_name):
    """The exchange a service's retries and dead letters go through: its own, bound to its own queues only."""
    return Exchange("{}.redelivery".format(service_name), type="direct", durable=True)


def durable_queue(config, name, arguments=None, **kwargs):
    """A durable kombu ``Queue`` whose arguments come from ``queue_arguments``."""
    return Queue(name, durable=True, queue_arguments=queue_arguments(config, **(arguments or {})), **kwargs)


def dead_letter_queue(config, service_name):
    """The service's dead-letter queue, bound to its redelivery exchange by its own name."""
    name = dead_letter_queue_name(service_name)
    return durable_queue(config, name, exchange=redelivery_exchange(service_name), routing_key=name)


RETRY_STEP_FACTOR = 4  # each fixed retry delay is this many times the one before, up to the cap


def retry_delays(base, cap):
    """The fixed delays (seconds) of the retry queues: base, 4 x base, ... capped.

    A few steps rather than one per attempt: each step is a queue per
    consumer queue. With the defaults (0.5, 30): 0.5, 2, 8, 30.
    """
    base, cap = max(0.001, float(base)), max(0.001, float(cap))
    delays, delay = [], base
    while delay < cap:
        delays.append(round(delay, 3))
        delay *= RETRY_STEP_FACTOR
    delays.append(round(cap, 3))
    return delays


def retry_delay(attempt, delays):
    """The fixed delay after the given (1-based) failed attempt."""
    return delays[min(max(attempt, 1), len(delays)) - 1]


def retry_queue(config, queue_name, delay, exchange):
    """Messages wait here ``delay`` seconds, then expire back into ``queue_name`` (through ``exchange``).

    The TTL is the queue's, not each message's: RabbitMQ expires only the head
    of a queue, so with per-message TTLs a long delay at the head held back
    every shorter one behind it. The name carries the delay, so a change of
    the backoff settings makes new queues instead of clashing with old ones.
    (Named ``.backoff-``: the ``.retry-`` queues of earlier releases
    dead-lettered through the default exchange, and RabbitMQ refuses to
    redeclare a queue with other arguments. Left over, they still empty into
    their queue as their messages expire; then they can be deleted.)
    """
    milliseconds = int(round(delay * 1000))
    name = "{}.backoff-{}ms".format(queue_name, milliseconds)
    return durable_queue(config, name, exchange=exchange, routing_key=name, arguments={
        "x-message-ttl": milliseconds,
        "x-dead-letter-exchange": exchange.name,
        "x-dead-letter-routing-key": queue_name,
    })


def backoff_seconds(attempt, base, cap):
    """Full-jitter exponential backoff for the given (1-based) failed attempt."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


MAX_CONTEXT_VALUE = 256  # characters of a context header value worth carrying on
MAX_CALL_ID_STACK = 64


def safe_context_data(data):
    """Worker context data, from message headers anyone can forge, reduced to what is safe to use.

    nameko builds each worker's context from the message's headers as they
    come: a ``nameko.call_id_stack`` that is not a list of strings makes
    the worker fail before any entrypoint code runs, outside the error
    handling that settles a message, which kills the whole service. Kept:
    a call id stack of strings, and scalar values of reasonable size; a
    correlation id only if the outbox can store it (64 characters, no NUL).
    """
    safe = {}
    for key, value in data.items():
        if key == CALL_ID_STACK_CONTEXT_KEY:
            if isinstance(value, list) and all(isinstance(item, str) and len(item) <= MAX_CONTEXT_VALUE
                                               for item in value):
                safe[key] = value[-MAX_CALL_ID_STACK:]
        elif key == CORRELATION_KEY:
            if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
                safe[key] = value
        elif isinstance(value, str):
            if len(value) <= MAX_CONTEXT_VALUE:
                safe[key] = value
        elif isinstance(value, (int, float)):
            safe[key] = value
    return safe


def delivery_attempt(headers, max_attempts):
    """The attempt number a message carries, and a note if its header was not believable.

    Only this service writes ``x-delivery-attempt``, as an integer from 1; any
    other value (a string, a negative number, a list, bytes, a bool) is
    forged or corrupt, and counts as the last attempt so that it can never
    buy a message endless retries. Values above the maximum are capped.
    """
    value = headers.get(ATTEMPT_HEADER, 1)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return min(value, max_attempts), None
    return max_attempts, "invalid {} header {!r}".format(ATTEMPT_HEADER, value)[:200]


def error_summary(exc):
    """A one-line reason for logs and dead-letter headers, without SQL text or parameters.

    A SQLAlchemy error's ``str`` carries the statement and its parameters
    (customer data); only the driver's first line is kept.
    """
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError) and exc.orig is not None:
        first = (str(exc.orig).strip().splitlines() or [""])[0]
        return "{}: {}".format(type(exc.orig).__name__, first)[:500]
    return str(exc)[:1000]


class _OwnPrefetchConsumer(Consumer):
    """kombu's consumer, setting its ``prefetch_count`` just before it starts consuming.

    ``basic.qos`` without ``global`` applies to the consumers a channel
    starts after it, and nameko sets it for every consumer of its channel
    before starting any: the last value set would hold for all of them.
    (kombu's own ``revive`` sets ``prefetch_count`` before consuming again.)
    """

    def consume(self, no_ack=None):
        if self.prefetch_count is not None:
            self.qos(prefetch_count=self.prefetch_count)
        return super().consume(no_ack)


class ConsumerAbandoned(Exception):
    """Thrown into a killed consumer's thread still waiting for a silent broker."""


class SafeAckQueueConsumer(QueueConsumer):
    """nameko's queue consumer, but an ack that meets a dead connection does not kill the service,
    and a stop does not wait seconds for the next message.

    A provider with a ``prefetch_count`` of its own gets it (nameko gives
    every consumer ``max_workers``, the number of messages it can hand to
    workers at once; a batching handler hands many to one worker).

    nameko 2.14 ignores only amqp's ``ConnectionError`` when acking; a socket
    the broker has just reset (RabbitMQ shutting down while a worker finishes)
    raises ``ConnectionResetError`` instead, which ends the worker with an
    error and so kills the whole container. The broker gives an unacked
    message of a closed connection to the next consumer anyway, and handlers
    skip events they already applied, so losing the ack is harmless. Event
    handlers, RPC entrypoints and RPC reply listeners all consume through it
    (see ``services.common.messaging.rpc``).

    Acks wait for the end of the event loop's turn and leave together, in one
    socket write: under load, messages arrive in bursts of up to the prefetch
    count, and acked one by one each ack costs this process a system call
    and the broker a wake-up.

    A kill waits at most ``KILL_TIMEOUT`` for the consumers to be cancelled
    and the connection closed: AMQP waits for the broker's answer to both
    with no timeout, so a broker gone silent (a partition) held the kill,
    and so the process, for ever.
    """

    def __init__(self):
        super().__init__()
        self._acks = []  # messages handled, waiting for the next flush of acks
        self._ack_flush = None
        self._live_connection = None  # the connection consuming now (kombu's ConsumerMixin clones its own)

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self._live_connection = connection
        super().on_consume_ready(connection, channel, consumers, **kwargs)

    def kill(self):
        abandon = eventlet.spawn_after(KILL_TIMEOUT, self._abandon)
        try:
            super().kill()
        finally:
            abandon.cancel()

    def _abandon(self):
        """Drop the connection's socket, then end the consumer's thread, which waits on it."""
        log.warning("%s: the broker did not answer within %ss of the kill; dropping the connection",
                    type(self).__name__, KILL_TIMEOUT)
        connection, self._live_connection = self._live_connection, None
        if connection is not None:
            drop(connection)
        if self._gt is not None and not self._gt.dead:
            # an Exception, which nameko's kill logs and goes on from (GreenletExit would escape it)
            self._gt.kill(ConsumerAbandoned())

    def consume(self, limit=None, timeout=None, safety_interval=STOP_POLL, **kwargs):
        # kombu waits up to ``safety_interval`` for a message before looking
        # at requests to stop; nameko's 1 s, paid twice, made every stop take
        # over 2 s even when idle
        return super().consume(limit=limit, timeout=timeout, safety_interval=safety_interval, **kwargs)

    def get_consumers(self, consumer_cls, channel):
        # kombu's own factory (ConsumerMixin.Consumer), with the consumer class that sets its prefetch
        own = functools.partial(_OwnPrefetchConsumer, channel, on_decode_error=self.on_decode_error)
        consumers = super().get_consumers(own, channel)
        for provider, consumer in self._consumers.items():
            consumer.prefetch_count = getattr(provider, "prefetch_count", None) or self.prefetch_count
        return consumers

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
        provider.settle_failure(message, MalformedMessage(
            "undecodable body ({}): {}".format(message.content_type, exc)))

    def requeue_later(self, message, delay):
        """Give ``message`` back to the broker after ``delay`` seconds, not at once.

        A message requeued at once comes straight back; if what failed is
        still failing, that is a hot loop. Held unacked meanwhile, it counts
        against the prefetch, which also slows a flood of such messages.
        """
        def requeue():
            try:
                self.requeue_message(message)
            except Exception:  # the channel is gone: the broker requeues it itself
                log.warning("could not requeue a message of %s after backing off",
                            message.delivery_info.get("routing_key"), exc_info=True)
        eventlet.spawn_after(delay, requeue)

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
        self.redelivery = redelivery_exchange(self.container.service_name)
        if self.queue.durable and not self.queue.auto_delete and not self.queue.exclusive:
            # the same queue nameko built, with its arguments from the one helper, also
            # bound to the service's redelivery exchange by its name (retries come back that way)
            self.queue = durable_queue(config, self.queue.name, bindings=[
                binding(self.queue.exchange, routing_key=self.queue.routing_key),
                binding(self.redelivery, routing_key=self.queue.name)])
        settings = PlatformSettings.from_config(config)
        self.max_attempts = max(1, settings.max_delivery_attempts)
        self.backoff_base = settings.retry_backoff_base
        self.backoff_max = settings.retry_backoff_max
        self.retry_delays = retry_delays(self.backoff_base, self.backoff_max)
        self.retry_queues = [retry_queue(config, self.queue.name, delay, self.redelivery)
                             for delay in self.retry_delays]
        self.dead_letters = dead_letter_queue(config, self.container.service_name)
        # mandatory: a retry or dead letter that reaches no queue (deleted
        # under us) raises UndeliverableMessage instead of vanishing
        self.publisher = Publisher(config[AMQP_URI_CONFIG_KEY], mandatory=True, ssl=ssl_options(config))
        self._bookkeeping_failures = 0

    def unpack_message_headers(self, message):
        return safe_context_data(super().unpack_message_headers(message))

    def handle_message_processed(self, message, result=None, exc_info=None):
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        self.settle_failure(message, exc_info[1])

    def settle_failure(self, message, exc):
        """Every failure ends here: retried later, dead-lettered, or (last resort) requeued after a backoff."""
        try:
            self._retry_or_dead_letter(message, exc)
        except Exception as first:
            log.error("%s: could not schedule a retry or dead-letter (%s); dead-lettering "
                      "with its headers stripped", self.queue.name, error_summary(first), exc_info=True)
            try:
                self.dead_letter(message, exc, headers=_minimal_headers(message), attempt=None,
                                 note="bookkeeping failed: {}: {}".format(type(first).__name__,
                                                                          error_summary(first)))
            except Exception as second:
                self._bookkeeping_failures += 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** min(self._bookkeeping_failures, 20))
                log.error("%s: could not dead-letter a message either (%s); requeueing it in %.2fs",
                          self.queue.name, error_summary(second), delay)
                self.queue_consumer.requeue_later(message, delay)
                return
        self._bookkeeping_failures = 0
        self.queue_consumer.ack_message(message)

    def _retry_or_dead_letter(self, message, exc):
        headers = dict(message.headers or {})
        attempt, note = delivery_attempt(headers, self.max_attempts)
        permanent = isinstance(exc, MalformedMessage)
        # A database that is down fails every attempt through no fault of the
        # message: keep retrying at the capped backoff instead of dead-lettering.
        waiting = is_unavailable(exc)
        if not permanent and (attempt < self.max_attempts or waiting):
            step = len(self.retry_delays) if waiting else min(attempt, len(self.retry_delays))
            target = self.retry_queues[step - 1]
            headers[ATTEMPT_HEADER] = min(attempt + 1, self.max_attempts)
            log.warning("%s failed attempt %d/%d (%s: %s)%s; retrying in %gs",
                        self.queue.name, attempt, self.max_attempts, type(exc).__name__, error_summary(exc),
                        " ({})".format(note) if note else "", self.retry_delays[step - 1])
            self._republish(message, target, headers)
            return
        self.dead_letter(message, exc, headers, attempt, note=note)

    def dead_letter(self, message, exc, headers=None, attempt=1, note=None):
        """Park ``message`` in the service's dead-letter queue, saying why."""
        headers = dict(message.headers or {}) if headers is None else headers
        reason = error_summary(exc)
        if note:
            reason = "{} ({})".format(reason, note)
        headers.update({
            "x-original-queue": self.queue.name,
            "x-original-exchange": str(message.delivery_info.get("exchange", "")),
            "x-original-routing-key": str(message.delivery_info.get("routing_key", "")),
            "x-error-type": type(exc).__name__,
            "x-error-message": reason[:1000],
            "x-attempts": attempt if attempt is not None else "unknown",
            "x-dead-lettered-at": datetime.now(timezone.utc).isoformat(),
        })
        log.error("%s: message dead-lettered after %s attempt(s): %s: %s",
                  self.queue.name, attempt, type(exc).__name__, reason)
        self._republish(message, self.dead_letters, headers)

    def _republish(self, message, queue, headers):
        body = message.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            body = bytes(body)
        self.publisher.publish(
            body,
            exchange=self.redelivery,
            routing_key=queue.name,
            declare=[queue],
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.properties.get("message_id"),
        )


def _minimal_headers(message):
    """The headers worth keeping when the original ones could not be sent on: the correlation id."""
    value = (message.headers or {}).get("nameko." + CORRELATION_KEY) if isinstance(message.headers, dict) else None
    return {"nameko." + CORRELATION_KEY: value[:64]} if isinstance(value, str) else {}


event_handler = ReliableEventHandler.decorator

MAX_BATCH = 32  # messages one worker may take at once


class BatchingEventHandler(ReliableEventHandler):
    """An event handler that gives the messages of a queue that arrive together to one worker.

    Under load a queue's messages arrive in bursts, up to the prefetch count
    in one read from the socket. Each worker costs its dependencies' setup
    and teardown, and each transaction a commit (on PostgreSQL a round trip
    and a flush of the write-ahead log). The messages delivered in one turn
    of the event loop, and those that come while the first lingers
    (``EVENT_BATCH_LINGER`` seconds), are handled by one worker, called with
    ``batch=[(body, context data), ...]``, in one transaction (see
    ``services.common.uow.handles``), and all are acked only after it
    returned, so after that transaction committed. A full batch does not
    linger: it can take no more.

    Its prefetch count is two batches, whatever ``max_workers`` is (a batch
    takes one worker): one batch is collected while the one before commits.
    With nameko's ``max_workers`` (10), under a backlog the queue gave one
    batch of 10 at a time, and the next only once it was acked.

    If the batch fails, nothing of it was committed, and each of its
    messages is handled again on its own, by a worker of its own, with the
    usual retries and dead letters: one bad message never holds back, nor
    takes an attempt from, the others. A message alone is handled as
    ``ReliableEventHandler`` handles it, called with its body.
    """

    @property
    def prefetch_count(self):
        return 2 * MAX_BATCH

    def setup(self):
        super().setup()
        self._arrived = []  # (body, message) delivered since the last hand-over
        self.linger = PlatformSettings.from_config(self.container.config).event_batch_linger

    def handle_message(self, body, message):
        self._arrived.append((body, message))
        if len(self._arrived) == 1:
            # after the consumer has taken every message of this read, and
            # those that arrive while the batch lingers
            eventlet.spawn_n(self._hand_over)

    def _hand_over(self):
        if self.linger and len(self._arrived) < MAX_BATCH:  # under a backlog, batches arrive full
            eventlet.sleep(self.linger)
        while self._arrived:
            batch, self._arrived = self._arrived[:MAX_BATCH], self._arrived[MAX_BATCH:]
            if len(batch) == 1:
                super().handle_message(*batch[0])
                continue
            contexts = [self.unpack_message_headers(message) for _, message in batch]
            try:
                self.container.spawn_worker(
                    self, (), {"batch": [(body, context) for (body, _), context in zip(batch, contexts)]},
                    context_data=dict(contexts[0]), handle_result=functools.partial(self._batch_result, batch))
            except ContainerBeingKilled:
                for _, message in batch:
                    self.queue_consumer.requeue_message(message)

    def _batch_result(self, batch, worker_ctx, result=None, exc_info=None):
        if exc_info is None:
            self._ack_all(batch)
        else:
            log.warning("%s: a batch of %d failed (%s: %s); handling each message on its own",
                        self.queue.name, len(batch), type(exc_info[1]).__name__, error_summary(exc_info[1]))
            # not from this worker, which still holds its slot in the pool
            eventlet.spawn_n(self._each_alone, batch)
        return result, exc_info

    def _ack_all(self, batch):
        for _, message in batch:
            self.queue_consumer.ack_message(message)

    def _each_alone(self, batch):
        for body, message in batch:
            super().handle_message(body, message)


batched_event_handler = BatchingEventHandler.decorator


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
        days = PlatformSettings.from_config(self.config).inbox_retention_days
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


UPSERT_DIALECTS = ("sqlite", "postgresql")  # where the inbox is an INSERT ... ON CONFLICT DO NOTHING


def _skipped(consumer, event):
    log.info("%s: event %s (%s) already handled; skipped", consumer, event.id, event.type)


@functools.lru_cache(maxsize=None)
def _insert_if_new(table, dialect):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing(index_elements=["event_id", "consumer"])


def first_deliveries(session, model, events, consumer):
    """Record a batch's ``events`` as handled by ``consumer``; the ids of those that were not yet.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the whole batch
    (SQLite and PostgreSQL; other databases: ``first_delivery`` per event),
    in the transaction that applies their effects, with the guarantees of
    ``first_delivery``. An id twice in ``events`` counts once.
    """
    dialect = session.get_bind().dialect.name
    if dialect not in UPSERT_DIALECTS:
        return {event.id for event in events if first_delivery(session, model, event, consumer)}
    now = utcnow()
    rows = {event.id: {"event_id": event.id, "consumer": consumer, "processed_at": now} for event in events}
    # executed with a list of rows, a statement with RETURNING goes out as one
    # multi-row INSERT (SQLAlchemy's "insertmanyvalues"), prebuilt once
    fresh = set(session.connection().execute(_insert_if_new_returning(model.__table__, dialect),
                                             list(rows.values())).scalars())
    for event in events:
        if event.id not in fresh:
            _skipped(consumer, event)
    return fresh


@functools.lru_cache(maxsize=None)
def _insert_if_new_returning(table, dialect):
    return _insert_if_new(table, dialect).returning(table.c.event_id)


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
    if dialect in UPSERT_DIALECTS:
        # on the session's own connection (same transaction), with a statement
        # built once: this runs for every event every consumer handles
        inserted = session.connection().execute(
            _insert_if_new(model.__table__, dialect),
            {"event_id": event.id, "consumer": consumer, "processed_at": utcnow()},
        ).rowcount
        if not inserted:
            _skipped(consumer, event)
        return bool(inserted)
    seen = session.execute(
        select(model.event_id).where(model.event_id == event.id, model.consumer == consumer)
    ).first()
    if seen:
        _skipped(consumer, event)
        return False
    session.add(model(event_id=event.id, consumer=consumer))
    return True
