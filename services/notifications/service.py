"""The notifications service: tells customers what happened to their order.

It reacts to the orders service's events. A handler renders the messages
(templates per event and channel), records one notification per channel the
customer chose as ``queued`` in the same transaction as the inbox entry, and
returns; the ``Sender`` delivers outside any handler, retrying what failed
for a reason that may pass. Without an SMTP server configured, email is
written to the service log instead (the ``log`` channel), so the system runs
with no provider set up.
"""
import logging

from marshmallow import ValidationError
from nameko.dependency_providers import Config
from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import selectinload

from services.common.consumers import InboxRetention
from services.common.correlation import CorrelationId
from services.common.db import ServiceDatabase
from services.common.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.events import utcnow
from services.common.metrics import Metrics
from services.common.rpc import rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.tracing import Tracer
from services.common.uow import UnitOfWork, handles
from services.common.validation import normalise_email

from . import domain
from .models import Notification, NotificationsBase, Preference, ProcessedEvent
from .rendering import Renderer
from .schemas import (
    ListNotificationsSchema,
    NotificationIdSchema,
    NotificationSchema,
    OrderEventSchema,
    PreferencesOutSchema,
    PreferencesSchema,
)
from .sender import Sender

log = logging.getLogger(__name__)

notification_schema = NotificationSchema()
preferences_schema = PreferencesOutSchema()
# built once: every order event is parsed with it
order_event_schema = OrderEventSchema()
renderer = Renderer()

# built once: every order event runs them (building a statement costs more than running it)
_preferences, _notifications = Preference.__table__, Notification.__table__
PREFERENCE = (select(_preferences.c.channels, _preferences.c.phone, _preferences.c.device_token)
              .where(_preferences.c.customer_email == bindparam("email")))
INSERT_NOTIFICATIONS = insert(_notifications).returning(_notifications.c.id, sort_by_parameter_order=True)


def _preference_key(email):
    """Preferences are keyed by the address in its normal form, the one orders stores.

    Events from before that rule may carry another case: normalised here too
    (an address that no longer passes is used as it came, lowercased).
    """
    try:
        return normalise_email(email.strip())
    except ValidationError:
        return email.strip().lower()


class NotificationsService(DeadLetterRpc, InboxRetention):
    name = "notifications"

    config = Config()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(NotificationsBase)
    sender = Sender(NotificationsBase)
    correlation_id = CorrelationId()
    tracer = Tracer()
    metrics = Metrics(NotificationsBase, counts=[
        ("notifications_by_status", "Notifications by status.", Notification.status)])
    shutdown = GracefulShutdown()
    uow = UnitOfWork(ProcessedEvent, outbox=None)

    # events -----------------------------------------------------------------------

    # One inbox name for the three: the rows written before handlers had
    # their own names say "notify", and a redelivery must still find them.
    @handles("orders", "order_confirmed", order_event_schema, inbox_name="notify")
    def order_confirmed(self, uow, event):
        self._notify(uow, event, "order_confirmed")

    @handles("orders", "order_rejected", order_event_schema, inbox_name="notify")
    def order_rejected(self, uow, event):
        self._notify(uow, event, "order_rejected")

    @handles("orders", "order_cancelled", order_event_schema, inbox_name="notify")
    def order_cancelled(self, uow, event):
        self._notify(uow, event, "order_cancelled")

    def _notify(self, uow, event, event_type):
        """Queue one notification per channel the customer chose; the sender delivers after commit."""
        order = event.data
        # Core statements: this runs once per order, and the ORM's
        # identity map and flush were most of its cost
        connection = uow.session.connection()
        preference = connection.execute(PREFERENCE, {"email": _preference_key(order["customer_email"])}).first()
        planned = domain.plan_deliveries(
            _preference_dict(preference) if preference else None, order["customer_email"], self.sender.configured)
        now = utcnow()
        rows = []
        for delivery in planned:
            content = renderer.render(event_type, delivery.template, order)
            rows.append({
                "event_id": event.id, "event_type": event_type, "order_id": order["id"],
                "recipient": order["customer_email"], "channel": delivery.channel,
                "address": delivery.address, "subject": content.subject[:200], "body": content.body,
                "html_body": content.html, "status": delivery.status, "last_error": delivery.reason,
                "next_attempt_at": now if delivery.status == domain.QUEUED else None,
                "attempt_count": 0, "round_attempts": 0, "correlation_id": self.correlation_id,
                "created_at": now, "updated_at": now, "sent_at": None})
        # with room to send at once, the rows are written claimed by this
        # process and handed to the sender after commit: no claim round
        claimed = self.sender.claim_on_write(rows, now)
        uow.after_rollback(lambda: self.sender.release(claimed))
        ids = connection.execute(INSERT_NOTIFICATIONS, rows).scalars().all() if rows else []
        uow.after_commit(lambda: self._queued(ids, rows, order, event_type, planned))

    def _queued(self, ids, rows, order, event_type, planned):
        self.sender.written(ids, rows)
        for delivery in planned:
            if delivery.status == domain.SKIPPED:
                log.warning("order %s: %s notification skipped: %s", order["id"], delivery.channel, delivery.reason)
        log.info("order %s: %s queued for %s via %s", order["id"], event_type,
                 domain.mask(order["customer_email"]), ", ".join(d.channel for d in planned) or "no channel")

    # RPC --------------------------------------------------------------------------

    @rpc(expected_exceptions=InvalidInput)
    def list_notifications(self, order_id=None, recipient=None, status=None, limit=100, channel=None):
        query = load_input(ListNotificationsSchema(), {"order_id": order_id, "recipient": recipient,
                                                  "status": status, "channel": channel, "limit": limit})
        statement = (select(Notification).options(selectinload(Notification.attempts))
                     .order_by(Notification.id).limit(query["limit"]))
        for column in ("order_id", "recipient", "status", "channel"):
            if query.get(column) is not None:
                statement = statement.where(getattr(Notification, column) == query[column])
        with self.db.get_session() as session:
            return notification_schema.dump(session.scalars(statement).all(), many=True)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def get_notification(self, notification_id):
        notification_id = load_input(NotificationIdSchema(), {"notification_id": notification_id})["notification_id"]
        with self.db.get_session() as session:
            return notification_schema.dump(self._notification(session, notification_id))

    @rpc(expected_exceptions=(InvalidInput, NotFound, Conflict))
    def retry_notification(self, notification_id):
        """Queue a failed notification again, with a fresh set of attempts."""
        notification_id = load_input(NotificationIdSchema(), {"notification_id": notification_id})["notification_id"]
        with self.db.get_session() as session:
            notification = self._notification(session, notification_id, for_update=True)
            try:
                domain.check_retryable(notification.status, notification.last_error)
            except domain.NotRetryable as exc:
                raise Conflict(str(exc), details={"status": [notification.status]}) from None
            notification.status = domain.QUEUED
            notification.round_attempts = 0
            notification.next_attempt_at = utcnow()
            session.flush()
            result = notification_schema.dump(notification)
        self.sender.wake()
        log.info("notification %s queued again by request", notification_id)
        return result

    @rpc(expected_exceptions=InvalidInput)
    def set_preferences(self, customer_email, channels, phone=None, device_token=None):
        data = load_input(PreferencesSchema(), {"customer_email": customer_email, "channels": channels,
                                           "phone": phone, "device_token": device_token})
        key = _preference_key(data["customer_email"])
        with self.db.get_session() as session:
            preference = session.get(Preference, key)
            if preference is None:
                preference = Preference(customer_email=key)
                session.add(preference)
            preference.channels = list(data["channels"])
            preference.phone = data["phone"]
            preference.device_token = data["device_token"]
            preference.updated_at = utcnow()
            session.flush()
            return preferences_schema.dump(preference)

    @rpc(expected_exceptions=InvalidInput)
    def get_preferences(self, customer_email):
        """The customer's choices; without any, the default (email only, ``updated_at`` null)."""
        data = load_input(PreferencesSchema(only=("customer_email",)), {"customer_email": customer_email})
        key = _preference_key(data["customer_email"])
        with self.db.get_session() as session:
            preference = session.get(Preference, key)
            if preference is None:
                return {"customer_email": key, "channels": list(domain.DEFAULT_CHANNELS), "phone": None,
                        "device_token": None, "updated_at": None}
            return preferences_schema.dump(preference)

    @rpc
    def ping(self):
        return "pong"

    # helpers ------------------------------------------------------------------------

    @staticmethod
    def _notification(session, notification_id, for_update=False):
        statement = (select(Notification).options(selectinload(Notification.attempts))
                     .where(Notification.id == notification_id))
        if for_update:
            statement = statement.with_for_update()
        notification = session.scalars(statement).first()
        if notification is None:
            raise NotFound("No notification with id {}.".format(notification_id),
                           details={"notification_id": [str(notification_id)]})
        return notification


def _preference_dict(preference):
    return {"channels": preference.channels, "phone": preference.phone, "device_token": preference.device_token}
