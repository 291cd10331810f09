"""The events inventory publishes, each declared once: name and schema.

``product_changed`` keeps orders' copy of the catalogue; ``stock_reserved``
and ``stock_rejected`` answer an ``order_created``; ``stock_released`` is an
integration event (a fact for reporting or a future consumer): nothing in
this system consumes it, so reaching no queue is not a reason to keep it.
See docs/saga.md for who reads each one.
"""
from marshmallow import Schema, fields

from services.common.messaging.contracts import Published, optional_names, published


class ProductChangedSchema(Schema):
    """A catalogue entry as of ``version`` (orders keeps the newest it saw)."""

    sku = fields.String(required=True)
    name = fields.String(required=True)
    price = fields.Integer(required=True)
    active = fields.Boolean(required=True)
    version = fields.Integer(required=True)


class LineSchema(Schema):
    sku = fields.String(required=True)
    quantity = fields.Integer(required=True)


class ReservationSchema(Schema):
    """An order's reservation: its id and the quantities per sku."""

    order_id = fields.String(required=True)
    lines = fields.List(fields.Nested(LineSchema), required=True)


class ShortfallSchema(Schema):
    sku = fields.String(required=True)
    reason = fields.String(required=True)
    requested = fields.Integer(required=True)
    available = fields.Integer(required=True)


class RejectionSchema(Schema):
    order_id = fields.String(required=True)
    reasons = fields.List(fields.Nested(ShortfallSchema), required=True)


PRODUCT_CHANGED = Published("product_changed", ProductChangedSchema())
STOCK_RESERVED = Published("stock_reserved", ReservationSchema())
STOCK_REJECTED = Published("stock_rejected", RejectionSchema())
STOCK_RELEASED = Published("stock_released", ReservationSchema(), optional=True)

PUBLISHED = published(PRODUCT_CHANGED, STOCK_RESERVED, STOCK_REJECTED, STOCK_RELEASED)
OPTIONAL = optional_names(PUBLISHED)
