"""What inventory accepts over RPC and what its events carry."""
from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

SKU = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      error="Use 1-64 letters, digits, '.', '_' or '-'.")


class NewProductSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = fields.String(required=True, validate=SKU)
    name = fields.String(required=True, validate=validate.Length(1, 200))
    price = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    stock = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0))


class ProductChangesSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(validate=validate.Length(1, 200))
    price = fields.Integer(strict=True, validate=validate.Range(min=0))
    active = fields.Boolean()


class QuantitySchema(Schema):
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class ProductSchema(Schema):
    sku = fields.String()
    name = fields.String()
    price = fields.Integer()
    on_hand = fields.Integer()
    reserved = fields.Integer()
    available = fields.Integer()
    active = fields.Boolean()
    version = fields.Integer()


class ProductChangedSchema(Schema):
    """Event ``product_changed``: a catalogue entry as of ``version``."""

    sku = fields.String(required=True)
    name = fields.String(required=True)
    price = fields.Integer(required=True)
    active = fields.Boolean(required=True)
    version = fields.Integer(required=True)


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
