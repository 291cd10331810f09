"""What orders accepts (HTTP and RPC), what it returns, and the events it reads."""
from services.common.schema import UtcDateTime
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from . import domain

SKU = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      error="Use 1-64 letters, digits, '.', '_' or '-'.")


class _LineSchema(Schema):
    class Meta:
        unknown = RAISE

    sku = fields.String(required=True, validate=SKU)
    quantity = fields.Integer(required=True, strict=True)


def place_order_schema(max_quantity=1000, max_lines=100):
    """The body of ``POST /orders``; limits come from config.

    A sku may appear once per order: a repeated sku is refused, not merged,
    so that what the client sent is exactly what is stored.
    """

    class LineSchema(_LineSchema):
        quantity = fields.Integer(required=True, strict=True,
                                  validate=validate.Range(min=1, max=max_quantity))

    class PlaceOrderSchema(Schema):
        class Meta:
            unknown = RAISE

        customer_email = fields.Email(required=True, validate=validate.Length(max=254))
        lines = fields.List(fields.Nested(LineSchema), required=True,
                            validate=validate.Length(min=1, max=max_lines))

        @validates_schema
        def no_repeated_sku(self, data, **kwargs):
            skus = [line["sku"] for line in data.get("lines", [])]
            repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
            if repeated:
                raise ValidationError(
                    ["Each sku may appear once; repeated: {}.".format(", ".join(repeated))], "lines")

    return PlaceOrderSchema()


class ListOrdersSchema(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf(domain.STATUSES))
    customer_email = fields.Email()
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class OrderLineSchema(Schema):
    sku = fields.String()
    name = fields.String()
    quantity = fields.Integer()
    unit_price = fields.Integer()
    line_total = fields.Method("get_line_total")

    def get_line_total(self, line):
        return line.quantity * line.unit_price


class StatusChangeSchema(Schema):
    from_status = fields.String(data_key="from", allow_none=True)
    to_status = fields.String(data_key="to")
    reason = fields.String(allow_none=True)
    at = UtcDateTime()


class OrderSchema(Schema):
    id = fields.String()
    status = fields.String()
    customer_email = fields.String()
    lines = fields.List(fields.Nested(OrderLineSchema))
    total = fields.Integer()
    reasons = fields.Raw(allow_none=True)
    correlation_id = fields.String(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    history = fields.List(fields.Nested(StatusChangeSchema))


# Events from inventory that orders consumes.

class _Event(Schema):
    class Meta:
        unknown = EXCLUDE


class StockReservedSchema(_Event):
    order_id = fields.String(required=True)


class ShortfallSchema(_Event):
    sku = fields.String(required=True)
    reason = fields.String(required=True)
    requested = fields.Integer()
    available = fields.Integer()


class StockRejectedSchema(_Event):
    order_id = fields.String(required=True)
    reasons = fields.List(fields.Nested(ShortfallSchema), required=True)


class ProductChangedSchema(_Event):
    sku = fields.String(required=True)
    name = fields.String(required=True)
    price = fields.Integer(required=True, validate=validate.Range(min=0))
    active = fields.Boolean(required=True)
    version = fields.Integer(required=True)
