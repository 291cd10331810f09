"""The events orders publishes, each declared once: name and schema.

``order_created`` asks inventory to reserve; each later status has its own
event, carrying the order as stored (less its history), named by
``order_id`` like ``order_created``. ``domain.ANNOUNCES`` says which event
each status an order moves to causes. See docs/saga.md.
"""
from marshmallow import Schema, fields

from services.common.messaging.contracts import Published, published

from .schemas import OrderSchema


class CreatedLineSchema(Schema):
    sku = fields.String(required=True)
    quantity = fields.Integer(required=True)
    unit_price = fields.Integer(required=True)


class OrderCreatedSchema(Schema):
    order_id = fields.String(required=True)
    customer_email = fields.String(required=True)
    total = fields.Integer(required=True)
    lines = fields.List(fields.Nested(CreatedLineSchema), required=True)


class OrderStatusSchema(OrderSchema):
    """The order as ``OrderSchema`` shows it, less its history, with its id as ``order_id``."""

    class Meta:
        exclude = ("id", "history")

    order_id = fields.String(required=True, attribute="id")


ORDER_CREATED = Published("order_created", OrderCreatedSchema())
ORDER_CONFIRMED = Published("order_confirmed", OrderStatusSchema())
ORDER_REJECTED = Published("order_rejected", OrderStatusSchema())
ORDER_CANCELLED = Published("order_cancelled", OrderStatusSchema())

PUBLISHED = published(ORDER_CREATED, ORDER_CONFIRMED, ORDER_REJECTED, ORDER_CANCELLED)
