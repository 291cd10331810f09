"""Email delivery by the notifications service, in a real container on a real
broker and database, to a real SMTP server on loopback."""
import time

import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy

from services.common import errors  # noqa: F401  (typed remote errors)
from services.common.messaging.events import new_event
from services.notifications.service import NotificationsService
from tests.support import eventually
from tests.support.notifications_fakes import FAST_DELIVERY, order_data, smtp_settings


BOTH_DATABASES = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


@pytest.fixture
def backend():
    """SQLite unless a test asks for both (the claim and retry queries run on each)."""
    return "sqlite"



@pytest.fixture
def config(service_config, smtp):
    service_config.update(FAST_DELIVERY)
    service_config.update(smtp_settings(smtp.port))
    return service_config


@pytest.fixture
def notifications(container_factory, config):
    container = container_factory(NotificationsService, config)
    container.start()
    return container  # container_factory kills it afterwards


def publish(config, event_type, data):
    body = new_event("orders", event_type, data)
    event_dispatcher(config)("orders", event_type, body)
    return body


def notes_for(config, order_id):
    with ClusterRpcProxy(config, timeout=5) as rpc:
        return rpc.notifications.list_notifications(order_id=order_id)


def settled(config, order_id, status):
    notes = notes_for(config, order_id)
    return notes if notes and all(note["status"] == status for note in notes) else None


@BOTH_DATABASES
def test_confirmed_order_is_emailed_to_the_customer(config, smtp, notifications):
    smtp.start()
    order = order_data("ann@example.com")
    publish(config, "order_confirmed", order)

    [mail] = eventually(smtp.messages, message="email received")
    assert mail.rcpt_tos == ["ann@example.com"]
    assert mail.mail_from == "shop@example.com"
    assert str(mail.message["To"]) == "ann@example.com"
    assert mail.subject == "Your order {} is confirmed".format(order["id"][:8])
    text = mail.text()
    assert "2 x Mug (MUG-1) at 10.00 = 20.00" in text
    assert "1 x Green tea (TEA-2) at 7.50 = 7.50" in text
    assert "Total: 27.50" in text
    assert "Status: confirmed" in text
    assert ">27.50<" in mail.html()

    [note] = eventually(lambda: settled(config, order["id"], "sent"), message="notification sent")
    assert note["channel"] == "email" and note["recipient"] == "ann@example.com"
    assert note["event_type"] == "order_confirmed" and note["subject"] == mail.subject
    assert note["attempt_count"] == 1 and note["sent_at"]
    assert [(a["number"], a["outcome"], a["error"]) for a in note["attempts"]] == [(1, "sent", None)]


def test_the_same_event_delivered_twice_sends_one_email(config, smtp, notifications):
    smtp.start()
    order = order_data("bob@example.com", status="cancelled")
    body = new_event("orders", "order_cancelled", order)
    dispatch = event_dispatcher(config)
    dispatch("orders", "order_cancelled", body)
    dispatch("orders", "order_cancelled", body)

    eventually(lambda: settled(config, order["id"], "sent"), message="notification sent")
    time.sleep(0.5)  # room for a second email, were one coming
    assert len(smtp.to("bob@example.com")) == 1
    assert len(notes_for(config, order["id"])) == 1


def test_smtp_down_then_up_is_retried_and_delivered(config, smtp, container_factory):
    config.update(NOTIFY_MAX_ATTEMPTS=20, NOTIFY_BACKOFF_BASE=0.2, NOTIFY_BACKOFF_MAX=0.4)
    container = container_factory(NotificationsService, config)
    container.start()
    order = order_data("cyd@example.com")
    publish(config, "order_confirmed", order)

    def failed_once():
        notes = notes_for(config, order["id"])
        return notes if notes and notes[0]["attempt_count"] >= 1 else None

    [note] = eventually(failed_once, message="a failed attempt")
    assert note["status"] in ("queued", "sending")
    assert note["attempts"][0]["outcome"] == "transient_error"
    assert "ConnectionRefused" in note["attempts"][0]["error"]

    smtp.start()
    [note] = eventually(lambda: settled(config, order["id"], "sent"), message="delivered after the server came up")
    outcomes = [attempt["outcome"] for attempt in note["attempts"]]
    assert outcomes[-1] == "sent" and set(outcomes[:-1]) == {"transient_error"}
    assert len(smtp.to("cyd@example.com")) == 1


@BOTH_DATABASES
def test_smtp_down_for_good_fails_after_the_attempts_then_an_rpc_retry_delivers(config, smtp, notifications):
    order = order_data("dee@example.com", status="rejected",
                       reasons=[{"sku": "MUG-1", "reason": "insufficient_stock", "requested": 2, "available": 0}])
    publish(config, "order_rejected", order)

    [note] = eventually(lambda: settled(config, order["id"], "failed"), message="notification failed")
    assert note["attempt_count"] == 3
    assert [attempt["outcome"] for attempt in note["attempts"]] == ["transient_error"] * 3
    assert "ConnectionRefused" in note["last_error"]
    assert smtp.messages() == []

    smtp.start()
    with ClusterRpcProxy(config, timeout=5) as rpc:
        queued = rpc.notifications.retry_notification(note["id"])
    assert queued["status"] == "queued"
    [note] = eventually(lambda: settled(config, order["id"], "sent"), message="delivered after the retry")
    assert [attempt["outcome"] for attempt in note["attempts"]] == ["transient_error"] * 3 + ["sent"]
    assert note["last_error"] is None
    [mail] = smtp.to("dee@example.com")
    assert "MUG-1: not enough in stock (0 left, 2 asked for)" in mail.text()


def test_an_address_the_server_refuses_fails_at_once(config, smtp, notifications):
    smtp.refuse = "^nobody@"
    smtp.start()
    order = order_data("nobody@example.com")
    publish(config, "order_confirmed", order)

    [note] = eventually(lambda: settled(config, order["id"], "failed"), message="notification failed")
    assert note["attempt_count"] == 1
    assert note["attempts"][0]["outcome"] == "permanent_error"
    assert note["last_error"].startswith("SMTP 550")
    with ClusterRpcProxy(config, timeout=5) as rpc:
        assert rpc.notifications.list_notifications(status="failed") == [note]
        assert rpc.notifications.list_notifications(recipient="nobody@example.com")[0]["id"] == note["id"]


def test_a_slow_mail_server_does_not_hold_the_event_handlers(config, smtp, notifications):
    smtp.start(delay=3)
    orders = [order_data("slow{}@example.com".format(index)) for index in range(6)]
    started = time.monotonic()
    for order in orders:
        publish(config, "order_confirmed", order)

    def all_recorded():
        with ClusterRpcProxy(config, timeout=5) as rpc:
            notes = rpc.notifications.list_notifications()
        return notes if len(notes) == len(orders) else None

    notes = eventually(all_recorded, timeout=10, interval=0.05, message="all notifications recorded")
    print("all recorded after {:.2f}s".format(time.monotonic() - started))
    assert all(note["status"] in ("queued", "sending") for note in notes)
    # The property, without a wall-clock bound: every notification was recorded
    # while no email had got through (each takes the server 3 s to accept), so
    # no handler waited for the mail server.
    assert smtp.messages() == []  # still in the server's slow DATA phase
    eventually(lambda: len(smtp.messages()) == len(orders), timeout=15, message="all emails delivered")


@BOTH_DATABASES
def test_more_notifications_than_delivery_slots_are_each_sent_once(config, smtp, container_factory):
    """Two slots and eight orders: the first rows are written claimed and handed
    straight to the sender, the rest are written queued (no room) and taken by
    the loop as slots free up; every customer gets exactly one email."""
    smtp.start(delay=0.3)
    config["NOTIFY_CONCURRENCY"] = 2
    container_factory(NotificationsService, config).start()
    orders = [order_data("slot{}@example.com".format(index)) for index in range(8)]
    for order in orders:
        publish(config, "order_confirmed", order)

    def all_sent():
        with ClusterRpcProxy(config, timeout=5) as rpc:
            notes = rpc.notifications.list_notifications()
        return notes if len(notes) == len(orders) and all(n["status"] == "sent" for n in notes) else None

    notes = eventually(all_sent, timeout=20, message="all sent")
    assert all(note["attempt_count"] == 1 and len(note["attempts"]) == 1 for note in notes)
    received = sorted(address for mail in smtp.messages() for address in mail.rcpt_tos)
    assert received == sorted(order["customer_email"] for order in orders)


@BOTH_DATABASES
def test_a_batch_of_order_events_reads_its_customers_choices_once(backend, config, smtp, notifications, statements):
    """Their preferences read in one query for the batch, their notifications written in one statement,
    and each customer's own channels used."""
    from nameko.testing.services import entrypoint_hook

    smtp.start()
    with ClusterRpcProxy(config, timeout=5) as rpc:
        rpc.notifications.set_preferences("bo@example.com", ["email", "sms"], phone="+447700900125")
    orders = [order_data(email) for email in ("ann@example.com", "bo@example.com", "Ann@example.com")]
    del statements[:]
    with entrypoint_hook(notifications, "order_confirmed") as notify:
        notify(batch=[(new_event("orders", "order_confirmed", order), {}) for order in orders])
    reads = [sql for sql in statements if "FROM notification_preferences" in sql]
    assert len(reads) == 1, reads
    writes = [sql for sql in statements if sql.startswith("INSERT INTO notifications ")]
    # SQLite returns ids in order only row by row: SQLAlchemy sends one statement each, in process
    assert len(writes) == (1 if backend == "postgresql" else 4), writes
    assert [sorted(note["channel"] for note in notes_for(config, order["id"])) for order in orders] == [
        ["email"], ["email", "sms"], ["email"]]


@BOTH_DATABASES
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_commit_that_reported_failure_sends_its_notification_once_without_waiting_for_the_lease(
        config, smtp, container_factory, monkeypatch, applied):
    """The connection drops on the way back from a COMMIT. If the server applied it, the rows were
    claimed on write by this process and no delivery took them: they go out at once, not when the
    lease (here 300 s) lapses. If it did not, the retried event writes them again: one email either way."""
    import eventlet
    from sqlalchemy.engine.default import DefaultDialect

    from services.common.db.pgwire import BatchingPGDialect
    from services.notifications.sender import Sender

    config["NOTIFY_LEASE"] = 300
    claimed_by = set()  # green threads that wrote claimed rows in the transaction they are in
    claim_on_write = Sender.claim_on_write

    def claiming(sender, rows, now):
        claimed = claim_on_write(sender, rows, now)
        if claimed:
            claimed_by.add(eventlet.getcurrent())
        return claimed

    def lost_on_the_way_back(real):
        def do_commit(dialect, dbapi_connection):
            if lost or eventlet.getcurrent() not in claimed_by:  # once
                return real(dialect, dbapi_connection)
            claimed_by.clear()
            lost.append(True)
            if applied:
                real(dialect, dbapi_connection)
            else:
                dialect.do_rollback(dbapi_connection)
            raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")
        return do_commit
    lost = []
    monkeypatch.setattr(Sender, "claim_on_write", claiming)
    for dialect in (DefaultDialect, BatchingPGDialect):
        monkeypatch.setattr(dialect, "do_commit", lost_on_the_way_back(dialect.do_commit))
    container_factory(NotificationsService, config).start()
    smtp.start()

    order = order_data("ann@example.com")
    publish(config, "order_confirmed", order)
    [note] = eventually(lambda: settled(config, order["id"], "sent"), timeout=20, message="sent, not left claimed")
    assert lost == [True], "the commit should have reported a failure once"
    time.sleep(2 * FAST_DELIVERY["NOTIFY_POLL_INTERVAL"])  # a second send would have been claimed by now
    assert [mail.rcpt_tos for mail in smtp.messages()] == [["ann@example.com"]]
    assert note["attempt_count"] == 1
    assert len(notes_for(config, order["id"])) == 1


def notification_row(event_id, status, next_attempt_at):
    """A notifications row as the handler writes it, for one email to lee@example.com."""
    return {"event_id": event_id, "event_type": "order_confirmed", "order_id": "o-" + event_id,
            "recipient": "lee@example.com", "channel": "email", "address": "lee@example.com",
            "subject": "About " + event_id, "body": "Hello", "status": status, "attempt_count": 0,
            "round_attempts": 0, "next_attempt_at": next_attempt_at}


def insert_rows(config, rows):
    from sqlalchemy import insert

    from services.common.db.database import make_engine
    from services.notifications.models import Notification

    engine = make_engine(config["DB_URIS"]["notifications:NotificationsBase"])
    try:
        with engine.begin() as connection:
            connection.execute(insert(Notification), rows)
    finally:
        engine.dispose()


def started_sender(container_factory, config):
    from services.notifications.sender import Sender

    container = container_factory(NotificationsService, config)
    container.start()
    [sender] = [dependency for dependency in container.dependencies if isinstance(dependency, Sender)]
    return sender


def subjects_sent(smtp):
    return {mail.subject for mail in smtp.messages()}


@BOTH_DATABASES
def test_thousands_of_claims_to_recheck_do_not_stop_the_sender(config, smtp, container_factory):
    """A long stretch of failed writes leaves many claims to re-check: they go in statements of a
    bounded size (PostgreSQL refused one IN list of 8,000 row values, and the sender then claimed
    nothing at all), and ordinary due rows are still sent."""
    from datetime import timedelta

    from services.common.messaging.events import utcnow

    config["NOTIFY_LEASE"] = 300
    sender = started_sender(container_factory, config)
    smtp.start()
    lease = utcnow() + timedelta(seconds=300)
    # one committed by a commit that reported failure, one plainly due
    insert_rows(config, [notification_row("committed-anyway", "sending", lease),
                         notification_row("plainly-due", "queued", utcnow())])
    sender.release([notification_row("committed-anyway", "sending", lease)]
                   + [notification_row("never-committed-{}".format(n), "sending", lease) for n in range(10000)],
                   0, commit_failed=True)
    eventually(lambda: subjects_sent(smtp) >= {"About committed-anyway", "About plainly-due"}, timeout=20,
               message="both rows sent")


@BOTH_DATABASES
def test_a_recheck_the_database_refuses_does_not_stop_the_sender(config, smtp, container_factory):
    """The re-check fails (here on a value the driver cannot send; in life, a database still away):
    it waits for the next turn, and the rows that are due are claimed and sent meanwhile."""
    from datetime import timedelta

    from services.common.messaging.events import utcnow

    sender = started_sender(container_factory, config)
    smtp.start()
    unsendable = dict(notification_row("x", "sending", utcnow() + timedelta(seconds=300)), event_id=object())
    sender.release([unsendable], 0, commit_failed=True)
    insert_rows(config, [notification_row("plainly-due", "queued", utcnow())])
    sender.wake()
    eventually(lambda: "About plainly-due" in subjects_sent(smtp), timeout=20, message="the due row sent")
