"""The sender's bookkeeping on each database: two instances never send one
notification twice, a lapsed claim is taken over, and migration 0002 keeps
the rows written before it."""
from datetime import timedelta

import pytest
from alembic import command
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.common.db.database import make_engine
from services.common.messaging.events import new_event, utcnow
from services.common.db.migrate import alembic_config
from services.notifications.models import Notification
from services.notifications.service import NotificationsService
from tests.support import eventually
from tests.support.notifications_fakes import FAST_DELIVERY, order_data, smtp_settings

DB_KEY = "notifications:NotificationsBase"


@pytest.fixture
def config(service_config, smtp):
    smtp.start()
    service_config.update(FAST_DELIVERY)
    service_config.update(smtp_settings(smtp.port))
    service_config["NOTIFY_POLL_INTERVAL"] = 0.1  # both instances look often: claims collide
    return service_config


def all_sent(config, count):
    with ClusterRpcProxy(config, timeout=5) as rpc:
        notes = rpc.notifications.list_notifications()
    return notes if len(notes) == count and all(note["status"] == "sent" for note in notes) else None


def test_two_instances_send_each_notification_once(config, smtp, container_factory):
    for _ in range(2):
        container_factory(NotificationsService, config).start()
    dispatch = event_dispatcher(config)
    orders = [order_data("twin{}@example.com".format(index)) for index in range(20)]
    for order in orders:
        dispatch("orders", "order_confirmed", new_event("orders", "order_confirmed", order))

    notes = eventually(lambda: all_sent(config, len(orders)), timeout=20, message="all sent")
    assert all(note["attempt_count"] == 1 for note in notes)
    received = sorted(address for mail in smtp.messages() for address in mail.rcpt_tos)
    assert received == sorted(order["customer_email"] for order in orders)


def test_a_claim_that_lapsed_is_taken_over(config, smtp, container_factory):
    """A process that died mid-send leaves a row 'sending'; another sends it once its lease ran out."""
    engine = make_engine(config["DB_URIS"][DB_KEY])
    with Session(engine) as session, session.begin():
        session.add(Notification(
            event_id="e-lapsed", event_type="order_confirmed", order_id="o-lapsed", recipient="lee@example.com",
            channel="email", address="lee@example.com", subject="Your order o-lapsed is confirmed", body="Hi",
            status="sending", attempt_count=0, round_attempts=0,
            next_attempt_at=utcnow() - timedelta(seconds=1)))
    engine.dispose()
    container_factory(NotificationsService, config).start()

    [note] = eventually(lambda: all_sent(config, 1), message="taken over and sent")
    assert note["attempts"][0]["outcome"] == "sent"
    [mail] = smtp.to("lee@example.com")
    assert mail.subject == "Your order o-lapsed is confirmed"


def test_migration_0002_keeps_earlier_notifications(make_database, backend):
    uri = make_database("notifications", backend)
    alembic = alembic_config("notifications", uri)
    command.downgrade(alembic, "0001")
    engine = make_engine(uri)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO notifications (event_id, event_type, order_id, recipient, channel, subject, body,"
            " status, created_at, updated_at, sent_at) VALUES ('e1', 'order_confirmed', 'o1',"
            " 'old@example.com', 'log', 'Your order o1 is confirmed', 'Hi', 'sent', :now, :now, :now)"),
            {"now": utcnow()})
    command.upgrade(alembic, "head")
    with Session(engine) as session:
        [note] = session.query(Notification).all()
        assert (note.status, note.address, note.attempt_count, note.attempts) == ("sent", "old@example.com", 0, [])
    engine.dispose()
