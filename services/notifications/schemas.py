
from services.common.schema import UtcDateTime
from marshmallow import EXCLUDE, Schema, fields, validate


class _Event(Schema):
    class Meta:
        unknown = EXCLUDE


class OrderLineSchema(_Event):
    sku = fields.String(required=True)
    name = fields.String(required=True)
    quantity = fields.Integer(required=True)
    unit_price = fields.Integer(required=True)


class ShortfallSchema(_Event):
    sku = fields.String(required=True)
    reason = fields.String(required=True)


class OrderEventSchema(_Event):
    """Events ``order_confirmed``, ``order_rejected``, ``order_cancelled``."""

    id = fields.String(required=True)
    status = fields.String(required=True)
    customer_email = fields.Email(required=True)
    lines = fields.List(fields.Nested(OrderLineSchema), required=True)
    total = fields.Integer(required=True)
    reasons = fields.List(fields.Nested(ShortfallSchema), allow_none=True, load_default=None)


class ListNotificationsSchema(Schema):
    order_id = fields.String(allow_none=True)
    recipient = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class NotificationSchema(Schema):
    id = fields.Integer()
    event_id = fields.String()
    event_type = fields.String()
    order_id = fields.String()
    recipient = fields.String()
    channel = fields.String()
    subject = fields.String()
    body = fields.String()
    status = fields.String()
    correlation_id = fields.String(allow_none=True)
    created_at = UtcDateTime()
    sent_at = UtcDateTime(allow_none=True)
