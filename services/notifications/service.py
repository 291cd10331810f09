"""The notifications service: tells customers what happened to their order.

It reacts to the orders service's events and keeps a history of every
notification. Delivery goes through a channel; the ``log`` channel records
the message in the service's log, so the system runs with no provider set up.
"""
import logging

from marshmallow import ValidationError
from nameko.dependency_providers import Config
from nameko.rpc import rpc
from nameko_tracer import Tracer
from sqlalchemy import select

from services.common.consumers import event_handler, first_delivery
from services.common.correlation import CorrelationId
from services.common.db import ServiceDatabase
from services.common.deadletters import DeadLetterRpc
from services.common.errors import InvalidInput, validation_error
from services.common.events import parse_event, utcnow

from . import domain
from .models import Notification, NotificationsBase, ProcessedEvent
from .schemas import ListNotificationsSchema, NotificationSchema, OrderEventSchema

log = logging.getLogger(__name__)

notification_schema = NotificationSchema()
LOG_CHANNEL = "log"


class NotificationsService(DeadLetterRpc):
    name = "notifications"

    config = Config()
    db = ServiceDatabase(NotificationsBase)
    correlation_id = CorrelationId()
    tracer = Tracer()

    @event_handler("orders", "order_confirmed")
    def order_confirmed(self, body):
        self._notify(body, "order_confirmed")

    @event_handler("orders", "order_rejected")
    def order_rejected(self, body):
        self._notify(body, "order_rejected")

    @event_handler("orders", "order_cancelled")
    def order_cancelled(self, body):
        self._notify(body, "order_cancelled")

    @rpc(expected_exceptions=InvalidInput)
    def list_notifications(self, order_id=None, recipient=None, status=None, limit=100):
        try:
            query = ListNotificationsSchema().load(
                {"order_id": order_id, "recipient": recipient, "status": status, "limit": limit})
        except ValidationError as exc:
            raise validation_error(exc) from None
        statement = select(Notification).order_by(Notification.id).limit(query["limit"])
        for column in ("order_id", "recipient", "status"):
            if query.get(column) is not None:
                statement = statement.where(getattr(Notification, column) == query[column])
        with self.db.get_session() as session:
            return notification_schema.dump(session.scalars(statement).all(), many=True)

    @rpc
    def ping(self):
        return "pong"

    def _notify(self, body, event_type):
        event = parse_event(body, OrderEventSchema())
        order = event.data
        subject, text = domain.compose(event_type, order)
        with self.db.get_session() as session:
            if not first_delivery(session, ProcessedEvent, event, "notify"):
                return
            notification = Notification(
                event_id=event.id, event_type=event_type, order_id=order["id"],
                recipient=order["customer_email"], channel=LOG_CHANNEL, subject=subject, body=text,
                status="sent", sent_at=utcnow(), correlation_id=self.correlation_id)
            session.add(notification)
        log.info("notification %s to %s via %s: %s", notification.id, _mask(notification.recipient),
                 LOG_CHANNEL, subject)


def _mask(email):
    name, _, domain_part = email.partition("@")
    return "{}***@{}".format(name[:1], domain_part)
