"""Delivery, away from the event handlers.

The handlers only record notifications as ``queued`` (in the same
transaction as the inbox entry) and return; this dependency delivers them in
its own green threads, so a slow or dead mail server never holds a consumer
or a database transaction. It wakes up when a handler or an operator queued
something, when the next retry falls due, and at least every
``NOTIFY_POLL_INTERVAL`` seconds (which also picks up what another instance
or a previous run left behind).

Several instances may run: a notification is claimed with a conditional
UPDATE that only one of them can win, and the claim lapses after
``NOTIFY_LEASE`` seconds so that a crash mid-send does not strand it. The
price is at-least-once delivery: a process that dies after the provider
accepted a message but before recording it sends that message again later.

The common case skips the claim: when this process has room to send at once,
the handler writes its rows already claimed (``sending``, with the lease)
in its own transaction and hands them over after commit (``claim_on_write``,
then ``written``, or ``release`` if the transaction fails). The outcomes of finished deliveries are recorded together,
a batch per transaction. Neither changes what a crash costs: a claimed row
lapses and goes again, as before.
"""
import logging
import time
from collections import namedtuple
from datetime import timedelta

import eventlet
from eventlet.event import Event
from eventlet.queue import Empty, Full, LightQueue
from nameko.extensions import DependencyProvider
from sqlalchemy import bindparam, func, insert, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from services.common.observability import correlation
from services.common.db.database import read_only, shared_engine
from services.common.messaging.consumers import error_summary
from services.common.messaging.events import as_utc, utcnow
from services.common.settings import given

from . import domain
from .channels import Outgoing, build_channels
from .models import DeliveryAttempt, Notification

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10
PENDING = (domain.QUEUED, domain.SENDING)
MIN_WAIT = 0.01
RECORD_RETRY_FIRST = 0.2
RECORD_RETRY_MAX = 5
RECORD_LINGER = 0.005  # outcomes finishing this close together share a transaction
UNSURE_CHUNK = 200  # claims of failed transactions checked per statement

# what sending a claimed notification needs, and what its claim read
CLAIMED_FIELDS = ("id", "event_id", "event_type", "order_id", "channel", "address", "subject", "body",
                  "html_body", "attempt_count", "round_attempts", "correlation_id")
Claimed = namedtuple("Claimed", CLAIMED_FIELDS)
OUTCOME_FIELDS = ("status", "last_error", "round_attempts", "next_attempt_at", "sent_at", "attempt_count",
                  "updated_at")


class Sender(DependencyProvider):
    def __init__(self, declarative_base):
        self.declarative_base = declarative_base
        self._running = False

    def setup(self):
        config = self.container.config
        self.channels = build_channels(config)
        self.max_attempts = given(config, "NOTIFY_MAX_ATTEMPTS", 5, int)
        self.backoff_base = given(config, "NOTIFY_BACKOFF_BASE", 2.0, float)  # seconds
        self.backoff_max = given(config, "NOTIFY_BACKOFF_MAX", 300.0, float)  # seconds
        self.poll_interval = given(config, "NOTIFY_POLL_INTERVAL", 5.0, float)  # seconds
        self.concurrency = given(config, "NOTIFY_CONCURRENCY", 10, int)
        self.lease = timedelta(seconds=given(config, "NOTIFY_LEASE", 300.0, float))
        # a connection per delivery slot, plus the claiming loop and the outcome recorder
        self.shared = shared_engine(self.container, self.declarative_base.__name__, self.concurrency + 2)
        self._wakeup = LightQueue(maxsize=1)
        self._reserved = 0  # slots promised to handlers whose rows are not handed over yet
        self._room_wanted = False  # the loop left due rows behind for lack of a free slot
        self._outcomes = []  # (claim, changes, attempt) waiting to be recorded
        self._outcome_added = LightQueue(maxsize=1)
        self._unsure = set()  # (event_id, channel, lease) of claims whose transaction's outcome is unknown
        log.info("notification channels: %s", ", ".join(sorted(self.channels)))

    def start(self):
        self._running = True
        self._pool = eventlet.GreenPool(self.concurrency)
        self._loop_done = Event()
        self._recorder_done = Event()
        self.container.spawn_managed_thread(self._loop)
        self.container.spawn_managed_thread(self._recorder)

    def stop(self):
        # Deliveries under way get a moment to finish and be recorded; one
        # cut short stays claimed until its lease lapses, then goes again.
        self._running = False
        if getattr(self, "_loop_done", None) is not None:
            self.wake()
            with eventlet.Timeout(STOP_TIMEOUT, False):
                self._loop_done.wait()
                self._pool.waitall()
                self._signal_outcome()
                self._recorder_done.wait()
        self.shared.release()

    def kill(self):
        self._running = False
        self.shared.release()

    @property
    def engine(self):
        return self.shared.engine

    def get_dependency(self, worker_ctx):
        return self

    @property
    def configured(self):
        """Channels a customer can be reached through here (log is a stand-in, not a choice)."""
        return set(self.channels) - {domain.LOG}

    def wake(self):
        """Look for due notifications now rather than at the next poll."""
        _signal(self._wakeup)

    # hand-over: rows claimed when they are written ----------------------------------

    def claim_on_write(self, rows, now):
        """Mark the due rows among ``rows`` (about to be inserted) as claimed by this process.

        Only when there is a free delivery slot for each of them: the slots are
        promised to them, and the rows become ``sending`` with this process's
        lease. Without room they stay ``queued`` and wait for a free slot here
        or in another instance. Returns how many slots were promised; give them
        back with ``release`` if the rows are never committed.
        """
        due = [row for row in rows if row["status"] == domain.QUEUED]
        if not due or not self._running or self._free_slots() < len(due):
            return 0
        self._reserved += len(due)
        for row in due:
            row.update(status=domain.SENDING, next_attempt_at=now + self.lease)
        return len(due)

    def _free_slots(self):
        """Delivery slots neither running nor promised to rows being written."""
        return self._pool.free() - self._reserved

    def release(self, rows, count, commit_failed=False):
        """The transaction writing ``rows`` failed: give back the ``count`` slots promised to them.

        A transaction that failed at its COMMIT (``commit_failed``: the
        connection lost on the way, say) may have been committed by the
        server all the same, and its rows claimed on write would then wait
        for their lease to lapse (``NOTIFY_LEASE``, minutes) with no delivery
        under way. Those claims are given up as soon as the database answers
        again: each row still ``sending`` under exactly that lease is made
        due, for the loop to claim. A transaction that was not committed
        after all leaves nothing to match.
        """
        self._reserved -= count
        unsure = {(row["event_id"], row["channel"], row["next_attempt_at"])
                  for row in rows if commit_failed and row["status"] == domain.SENDING}
        if unsure:
            self._unsure |= unsure
            self.wake()

    def written(self, rows):
        """``rows`` are committed (each with its ``id``): deliver those claimed on write, look for the rest."""
        claims = [Claimed(**{field: row[field] for field in CLAIMED_FIELDS})
                  for row in rows if row["status"] == domain.SENDING]
        self._reserved -= len(claims)
        for claim in claims:
            self._pool.spawn_n(self._deliver_safely, claim)
        if any(row["status"] == domain.QUEUED for row in rows):
            self.wake()

    # the loop -------------------------------------------------------------------

    def _loop(self):
        try:
            while self._running:
                try:
                    wait = self.dispatch_due()
                except Exception as exc:  # the database may be away; try again later
                    log.warning("notification sender: %s: %s", type(exc).__name__, exc)
                    wait = self.poll_interval
                try:
                    self._wakeup.get(timeout=wait)
                except Empty:
                    pass
        finally:
            self._loop_done.send()

    def dispatch_due(self):
        """Start delivering what is due; return how long to sleep before looking again."""
        now = utcnow()
        if self._unsure:
            self._give_up_unsure_claims(now)
        free = self._free_slots()
        if free > 0:
            for row in self._claim(now, free):
                self._pool.spawn_n(self._deliver_safely, row)
        self._room_wanted = self._free_slots() <= 0
        if self._room_wanted:
            return self.poll_interval  # a finishing delivery wakes the loop
        with read_only(self.engine.connect()) as connection:
            due = as_utc(connection.execute(
                select(func.min(Notification.next_attempt_at)).where(Notification.status.in_(PENDING))).scalar())
        if due is None:
            return self.poll_interval
        return min(self.poll_interval, max(MIN_WAIT, (due - utcnow()).total_seconds()))

    def _give_up_unsure_claims(self, now):
        """Make due the rows still claimed under the leases of ``release``d transactions (see there).

        ``UNSURE_CHUNK`` claims to a statement (PostgreSQL refuses an IN list
        of some thousands of row values); a claim whose lease has lapsed is
        dropped, the loop takes its row anyway. Claims left when the database
        fails are tried at the next turn, and the loop goes on to claim the
        rows that are due.
        """
        self._unsure = {claim for claim in self._unsure if as_utc(claim[2]) > now}
        claims = list(self._unsure)
        table = Notification.__table__
        given_up = 0
        try:
            for start in range(0, len(claims), UNSURE_CHUNK):
                chunk = claims[start:start + UNSURE_CHUNK]
                with self.engine.begin() as connection:
                    given_up += connection.execute(
                        update(table)
                        .where(tuple_(table.c.event_id, table.c.channel, table.c.next_attempt_at).in_(chunk),
                               table.c.status == domain.SENDING)
                        .values(next_attempt_at=now, updated_at=now)).rowcount
                self._unsure.difference_update(chunk)
        except Exception as exc:  # the database may still be away: at the next turn
            log.warning("notification sender: %d claim(s) of failed transactions not checked yet (%s: %s)",
                        len(self._unsure), type(exc).__name__, error_summary(exc))
        if given_up:
            log.warning("%d notification(s) written by a transaction whose commit failed were committed "
                        "after all; sending them now", given_up)

    def _claim(self, now, limit):
        """Take up to ``limit`` due notifications for this process; return what sending them needs.

        One conditional UPDATE ... RETURNING claims and reads the rows at
        once; a row another process claimed in the meantime no longer
        matches its WHERE clause and is simply not returned.
        """
        table = Notification.__table__
        due = (table.c.status.in_(PENDING), table.c.next_attempt_at <= now)
        with self.engine.begin() as connection:
            candidates = dict(connection.execute(
                select(table.c.id, table.c.status).where(*due)
                .order_by(table.c.next_attempt_at, table.c.id).limit(limit)
            ).all())
            if not candidates:
                return []
            rows = connection.execute(
                update(table)
                .where(table.c.id.in_(list(candidates)), *due)
                .values(status=domain.SENDING, next_attempt_at=now + self.lease, updated_at=now)
                .returning(*[table.c[field] for field in CLAIMED_FIELDS])
            ).all()
        for row in rows:
            if candidates[row.id] == domain.SENDING:
                log.warning("notification %s: previous claim lapsed; sending again", row.id)
        return rows

    # one delivery -----------------------------------------------------------------

    def _deliver_safely(self, row):
        try:
            self.deliver(row)
        except Exception:
            log.exception("notification %s: delivery failed unexpectedly; it goes again "
                          "when its claim lapses", row.id)
        finally:
            correlation.set_current_correlation_id(None)
            if self._room_wanted:
                self.wake()

    def deliver(self, row):
        """Send one claimed notification (a row from ``_claim``) and record the attempt."""
        correlation.set_current_correlation_id(row.correlation_id)
        outgoing = Outgoing(
            id=row.id, key="{}:{}".format(row.event_id, row.channel), event_type=row.event_type,
            order_id=row.order_id, address=row.address, subject=row.subject, body=row.body, html=row.html_body)
        channel = self.channels.get(row.channel)
        started, clock = utcnow(), time.monotonic()
        error = skipped = None
        if channel is None:
            skipped = "{} is not configured ({} is not set)".format(
                row.channel, domain.CHANNEL_SETTING.get(row.channel, "no such channel"))
        else:
            try:
                channel.send(outgoing)
            except domain.DeliveryError as exc:
                error = exc
            except Exception as exc:  # a bug or an unforeseen library error: worth another try
                log.exception("notification %s: unexpected error from %s", row.id, row.channel)
                error = domain.TransientFailure("{}: {}".format(type(exc).__name__, exc))
        duration_ms = round((time.monotonic() - clock) * 1000, 1)
        self._record(row, started, duration_ms, error, skipped)

    def _record(self, row, started, duration_ms, error, skipped):
        """Queue the attempt and its consequence for the recorder.

        The row is still claimed by this process, so the counters read at
        claim time are current.
        """
        now = utcnow()
        number = row.attempt_count + 1
        changes = dict.fromkeys(OUTCOME_FIELDS)
        changes.update(attempt_count=number, updated_at=now, round_attempts=row.round_attempts)
        if skipped:
            changes.update(status=domain.SKIPPED, last_error=skipped)
            outcome, message = domain.OUTCOME_SKIPPED, skipped
            log.warning("notification %s skipped: %s", row.id, skipped)
        else:
            round_attempts = row.round_attempts + 1
            decision = domain.after_attempt(error, round_attempts, self.max_attempts,
                                            self.backoff_base, self.backoff_max)
            changes.update(status=decision.status, last_error=decision.error, round_attempts=round_attempts,
                           next_attempt_at=(now + timedelta(seconds=decision.delay)
                                            if decision.delay is not None else None))
            if decision.status == domain.SENT:
                changes["sent_at"] = now
            outcome, message = domain.outcome_of(error), (error.message if error else None)
            self._log(row, number, round_attempts, decision)
        attempt = dict(notification_id=row.id, number=number, at=started, outcome=outcome, error=message,
                       duration_ms=duration_ms)
        self._outcomes.append((row, changes, attempt))
        self._signal_outcome()

    def _signal_outcome(self):
        _signal(self._outcome_added)

    def _recorder(self):
        """Write finished attempts, all that have piled up in one transaction."""
        try:
            while self._running or self._outcomes or self._pool.running():
                try:
                    self._outcome_added.get(timeout=self.poll_interval)
                except Empty:
                    continue
                eventlet.sleep(RECORD_LINGER)
                batch, self._outcomes = self._outcomes, []
                if batch:
                    self._write_outcomes(batch)
        finally:
            self._recorder_done.send()

    def _write_outcomes(self, batch):
        # The messages have gone (or not); losing that fact to a database blip
        # would leave the rows claimed until their lease lapses and then send
        # them again, so keep trying while this process still holds the claims.
        deadline = time.monotonic() + self.lease.total_seconds() / 2
        delay = RECORD_RETRY_FIRST
        while True:
            try:
                with self.engine.begin() as connection:
                    connection.execute(_RECORD_OUTCOME, [dict(changes, claimed_id=row.id)
                                                         for row, changes, _ in batch])
                    connection.execute(insert(DeliveryAttempt.__table__), [attempt for _, _, attempt in batch])
                return
            except DBAPIError as exc:
                if not self._running or time.monotonic() + delay > deadline:
                    log.error("notifications %s: recording the attempts failed (%s: %s); they go again "
                              "when their claims lapse", [row.id for row, _, _ in batch], type(exc).__name__, exc)
                    return
                log.warning("notifications %s: recording the attempts failed (%s); retrying in %.1fs",
                            [row.id for row, _, _ in batch], type(exc).__name__, delay)
                eventlet.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX)

    def _log(self, row, number, round_attempts, decision):
        where = "{} {} to {}".format(row.id, row.channel, domain.mask(row.address))
        if decision.status == domain.SENT:
            log.info("notification %s sent (attempt %d)", where, number)
        elif decision.status == domain.QUEUED:
            log.warning("notification %s: attempt %d/%d failed (%s); next in %.2fs",
                        where, round_attempts, self.max_attempts, decision.error, decision.delay)
        else:
            log.error("notification %s failed after %d attempt(s): %s",
                      where, round_attempts, decision.error)


_table = Notification.__table__
# one statement for a whole batch of outcomes (executemany)
_RECORD_OUTCOME = (update(_table).where(_table.c.id == bindparam("claimed_id"))
                   .values({field: bindparam(field) for field in OUTCOME_FIELDS}))


def _signal(queue):
    try:
        queue.put_nowait(True)
    except Full:
        pass
