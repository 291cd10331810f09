"""The notifications service: tells customers what happened to their order.

It reacts to the orders service's events. A handler renders the messages
(templates per event and channel), records one notification per channel the
customer chose as ``queued`` in the same transaction as the inbox entry, and
returns; the ``Sender`` delivers outside any handler, retrying what failed
for a reason that may pass. Without an SMTP server configured, email is
written to the service log instead (the ``log`` channel), so the system runs
with no provider set up. Entrypoints only: the use cases are in ``handlers.py``.
"""
import logging

from nameko.dependency_providers import Config

from services.common.messaging.consumers import InboxRetention
from services.common.observability.correlation import CorrelationId
from services.common.db.database import ServiceDatabase
from services.common.messaging.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.observability.metrics import Metrics
from services.common.messaging.rpc import rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.observability.telemetry import Telemetry
from services.common.observability.tracing import Tracer
from services.common.uow import UnitOfWork, handles

from . import handlers
from .models import Notification, NotificationsBase, ProcessedEvent
from .schemas import ListNotificationsSchema, NotificationIdSchema, OrderEventSchema, PreferencesSchema
from .sender import Sender

log = logging.getLogger(__name__)

# built once: every order event is parsed with it
order_event_schema = OrderEventSchema()


class NotificationsService(DeadLetterRpc, InboxRetention):
    name = "notifications"

    config = Config()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(NotificationsBase)
    uow = UnitOfWork(ProcessedEvent, outbox=None)
    sender = Sender(NotificationsBase)
    correlation_id = CorrelationId()
    tracer = Tracer()
    telemetry = Telemetry()
    metrics = Metrics(NotificationsBase, counts=[
        ("notifications_by_status", "Notifications by status.", Notification.status)])
    shutdown = GracefulShutdown()

    # One inbox name for the three: the rows written before handlers had
    # their own names say "notify", and a redelivery must still find them.
    @handles("orders", "order_confirmed", order_event_schema, inbox_name="notify",
             prepare_batch=handlers.look_up_preferences)
    def order_confirmed(self, uow, event):
        handlers.notify(uow, event, "order_confirmed", self.sender, uow.correlation_id)

    @handles("orders", "order_rejected", order_event_schema, inbox_name="notify",
             prepare_batch=handlers.look_up_preferences)
    def order_rejected(self, uow, event):
        handlers.notify(uow, event, "order_rejected", self.sender, uow.correlation_id)

    @handles("orders", "order_cancelled", order_event_schema, inbox_name="notify",
             prepare_batch=handlers.look_up_preferences)
    def order_cancelled(self, uow, event):
        handlers.notify(uow, event, "order_cancelled", self.sender, uow.correlation_id)

    @rpc(expected_exceptions=InvalidInput)
    def list_notifications(self, order_id=None, recipient=None, status=None, limit=100, channel=None):
        query = load_input(ListNotificationsSchema(), {"order_id": order_id, "recipient": recipient,
                                                       "status": status, "channel": channel, "limit": limit})
        with self.uow.read_only() as uow:
            return handlers.list_notifications(uow, query)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def get_notification(self, notification_id):
        notification_id = load_input(NotificationIdSchema(), {"notification_id": notification_id})["notification_id"]
        with self.uow.read_only() as uow:
            return handlers.get_notification(uow, notification_id)

    @rpc(expected_exceptions=(InvalidInput, NotFound, Conflict))
    def retry_notification(self, notification_id):
        """Queue a failed notification again, with a fresh set of attempts."""
        notification_id = load_input(NotificationIdSchema(), {"notification_id": notification_id})["notification_id"]
        with self.uow as uow:
            result = handlers.retry_notification(uow, notification_id)
        self.sender.wake()
        log.info("notification %s queued again by request", notification_id)
        return result

    @rpc(expected_exceptions=InvalidInput)
    def set_preferences(self, customer_email, channels, phone=None, device_token=None):
        data = load_input(PreferencesSchema(), {"customer_email": customer_email, "channels": channels,
                                                "phone": phone, "device_token": device_token})
        with self.uow as uow:
            return handlers.set_preferences(uow, data)

    @rpc(expected_exceptions=InvalidInput)
    def get_preferences(self, customer_email):
        """The customer's choices; without any, the default (email only, ``updated_at`` null)."""
        data = load_input(PreferencesSchema(only=("customer_email",)), {"customer_email": customer_email})
        with self.uow.read_only() as uow:
            return handlers.get_preferences(uow, data["customer_email"])

    @rpc
    def ping(self):
        return "pong"
