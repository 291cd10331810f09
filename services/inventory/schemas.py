"""What inventory accepts over RPC and its admin HTTP API, and its read schemas for the events it consumes.

The events it publishes are declared in ``events.py``.

The limits are the ones orders' HTTP API applies (``services.common.validation``),
so a value refused over HTTP is refused over RPC, before anything is written.
"""
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from services.common.validation import (
    MAX_NAME, MAX_PRICE, MAX_RESTOCK, MAX_STOCK, SKU, SafeString, StrictBoolean, Text,
)


class NewProductSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = SafeString(required=True, validate=SKU)
    name = Text(MAX_NAME, required=True)
    price = fields.Integer(required=True, strict=True, validate=validate.Range(0, MAX_PRICE),
                           metadata={"description": "Unit price in cents."})
    stock = fields.Integer(load_default=0, strict=True, validate=validate.Range(0, MAX_STOCK),
                           metadata={"description": "Units on hand to start with."})


class ProductChangesSchema(Schema):
    class Meta:
        unknown = RAISE

    name = Text(MAX_NAME)
    price = fields.Integer(strict=True, validate=validate.Range(0, MAX_PRICE),
                           metadata={"description": "Unit price in cents."})
    active = StrictBoolean(metadata={"description": "Whether the product can be ordered."})


class ProductChangesBody(ProductChangesSchema):
    """``PATCH /products/<sku>``: a request that changes nothing is a mistake worth a 400."""

    @validates_schema
    def something_to_change(self, data, **kwargs):
        if not data:
            raise ValidationError(["Give at least one of name, price, active."], "_schema")


class QuantitySchema(Schema):
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_RESTOCK),
                              metadata={"description": "Units added to the stock on hand."})


class RestockSchema(QuantitySchema):
    class Meta:
        unknown = RAISE


class EmptyQuerySchema(Schema):
    """Routes without query parameters refuse any, so a typo is not silently ignored."""

    class Meta:
        unknown = RAISE


class ProductSchema(Schema):
    sku = fields.String(required=True)
    name = fields.String(required=True)
    price = fields.Integer(required=True, metadata={"description": "Cents."})
    on_hand = fields.Integer(required=True)
    reserved = fields.Integer(required=True)
    available = fields.Integer(required=True)
    active = fields.Boolean(required=True)
    version = fields.Integer(required=True)


class ProductListSchema(Schema):
    products = fields.List(fields.Nested(ProductSchema), required=True)


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
