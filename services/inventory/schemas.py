"""What inventory accepts over RPC, and its read schemas for the events it consumes.

The events it publishes are declared in ``events.py``.

The limits are the ones orders' HTTP API applies (``services.common.validation``),
so a value refused over HTTP is refused over RPC, before anything is written.
"""
from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from services.common.validation import (
    MAX_NAME, MAX_PRICE, MAX_RESTOCK, MAX_STOCK, SKU, SafeString, StrictBoolean, Text,
)


class NewProductSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = SafeString(required=True, validate=SKU)
    name = Text(MAX_NAME, required=True)
    price = fields.Integer(required=True, strict=True, validate=validate.Range(0, MAX_PRICE))
    stock = fields.Integer(load_default=0, strict=True, validate=validate.Range(0, MAX_STOCK))


class ProductChangesSchema(Schema):
    class Meta:
        unknown = RAISE

    name = Text(MAX_NAME)
    price = fields.Integer(strict=True, validate=validate.Range(0, MAX_PRICE))
    active = StrictBoolean()


class QuantitySchema(Schema):
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_RESTOCK))


class ProductSchema(Schema):
    sku = fields.String()
    name = fields.String()
    price = fields.Integer()
    on_hand = fields.Integer()
    reserved = fields.Integer()
    available = fields.Integer()
    active = fields.Boolean()
    version = fields.Integer()


# Events from orders that inventory consumes.

class OrderLineSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    sku = fields.String(required=True)
    quantity = fields.Integer(required=True, validate=validate.Range(min=1))


class OrderCreatedSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    order_id = fields.String(required=True)
    lines = fields.List(fields.Nested(OrderLineSchema), required=True, validate=validate.Length(min=1))


class OrderCancelledSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    order_id = fields.String(required=True)
