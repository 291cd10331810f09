"""What orders accepts (HTTP and RPC), what it returns, and the events it reads.

The same classes validate requests and generate the OpenAPI document
(``openapi.py``), so the published contract cannot drift from the checks.
"""
import base64
import binascii
import functools
import json
from datetime import datetime, timezone

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from services.common.messaging.events import as_utc
from services.common.schema import UtcDateTime
from services.common.validation import SKU, Email, FullMatch, SafeString, Text, storable

from .statuses import STATUSES

DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = 100
MAX_CURSOR_LENGTH = 200
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


class _Strict(Schema):
    class Meta:
        unknown = RAISE


# requests -----------------------------------------------------------------------


class _LineSchema(_Strict):
    sku = SafeString(required=True, validate=SKU)
    quantity = fields.Integer(required=True, strict=True)


@functools.lru_cache(maxsize=8)
def place_order_schema(max_quantity, max_lines):
    """The body of ``POST /orders``; limits come from ``OrdersSettings``.

    A sku may appear once per order: a repeated sku is refused, not merged,
    so that what the client sent is exactly what is stored.

    Cached per pair of limits: building the two schema classes cost about 4%
    of the orders process's CPU when it was done for every request, and a
    schema instance keeps no state between loads.
    """

    class LineSchema(_LineSchema):
        quantity = fields.Integer(required=True, strict=True,
                                  validate=validate.Range(min=1, max=max_quantity))

    class PlaceOrderSchema(_Strict):
        customer_email = Email(required=True)
        lines = fields.List(fields.Nested(LineSchema), required=True,
                            validate=validate.Length(min=1, max=max_lines),
                            metadata={"description": "Each sku at most once per order "
                                                     "(a repeated sku is refused, not merged)."})

        @validates_schema
        def no_repeated_sku(self, data, **kwargs):
            skus = [line["sku"] for line in data.get("lines", [])]
            repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
            if repeated:
                raise ValidationError(
                    ["Each sku may appear once; repeated: {}.".format(", ".join(repeated))], "lines")

    return PlaceOrderSchema()


class IdempotencyHeaderSchema(_Strict):
    idempotency_key = fields.String(
        data_key="Idempotency-Key", validate=FullMatch(
            IDEMPOTENCY_KEY_PATTERN, error="Use 1-255 visible ASCII characters."),
        metadata={"description": "Makes a retried POST safe: the same key with the same body "
                                 "returns the first answer; with another body it is a 409."})


def encode_cursor(created_at, order_id):
    """An opaque position after the order (created_at, id) in newest-first order."""
    raw = json.dumps([as_utc(created_at).isoformat(), order_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor):
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, order_id = json.loads(raw)
        created_at = datetime.fromisoformat(created_at)
        if created_at.tzinfo is None or not isinstance(order_id, str) or len(order_id) > 36:
            raise ValueError
        if not storable(order_id):
            raise ValueError
        # near year 1 or 9999 a moment with an offset has no UTC equivalent (OverflowError)
        return created_at.astimezone(timezone.utc), order_id
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise ValidationError("Not a cursor this API gave out.") from None


class Cursor(fields.String):
    """An empty cursor is no cursor (the first page), so ``cursor=$NEXT`` works in scripts."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > MAX_CURSOR_LENGTH:
            raise ValidationError("Not a cursor this API gave out.")
        return decode_cursor(text) if text else None


class ListOrdersSchema(_Strict):
    status = fields.String(validate=validate.OneOf(STATUSES))
    customer_email = Email()
    limit = fields.Integer(load_default=DEFAULT_PAGE_LIMIT, validate=validate.Range(min=1, max=MAX_PAGE_LIMIT),
                           metadata={"description": "Orders per page (default {}, at most {})."
                                     .format(DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT)})
    cursor = Cursor(metadata={
        "maxLength": MAX_CURSOR_LENGTH,
        "description": "The next_cursor of the previous page; omit (or leave empty) for the first page."})


class CancelOrderSchema(_Strict):
    reason = Text(200, load_default="cancelled by request")


class EmptyQuerySchema(_Strict):
    """Routes without query parameters refuse any, so a typo is not silently ignored."""


# responses (every field is always present, so all are marked required) ---------------


class OrderLineSchema(Schema):
    sku = fields.String(required=True)
    name = fields.String(required=True)
    quantity = fields.Integer(required=True)
    unit_price = fields.Integer(required=True, metadata={"description": "Cents, at placement."})
    line_total = fields.Method("get_line_total", required=True, metadata={"type": "integer"})

    def get_line_total(self, line):
        return line.quantity * line.unit_price


class StatusChangeSchema(Schema):
    from_status = fields.String(data_key="from", allow_none=True, required=True)
    to_status = fields.String(data_key="to", required=True)
    reason = fields.String(allow_none=True, required=True)
    at = UtcDateTime(required=True)


class RejectionReasonSchema(Schema):
    sku = fields.String(required=True)
    reason = fields.String(required=True)
    requested = fields.Integer(allow_none=True)
    available = fields.Integer(allow_none=True)


class OrderSchema(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    customer_email = fields.String(required=True)
    lines = fields.List(fields.Nested(OrderLineSchema), required=True)
    total = fields.Integer(required=True, metadata={"description": "Cents."})
    reasons = fields.List(fields.Nested(RejectionReasonSchema), allow_none=True, required=True,
                          metadata={"description": "Why stock was refused (rejected orders only)."})
    correlation_id = fields.String(allow_none=True, required=True)
    created_at = UtcDateTime(required=True)
    updated_at = UtcDateTime(required=True)
    history = fields.List(fields.Nested(StatusChangeSchema), required=True)


class OrderPageSchema(Schema):
    orders = fields.List(fields.Nested(OrderSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True,
                                metadata={"description": "Pass as ?cursor= for the next page; null on the last."})


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


class HealthSchema(Schema):
    status = fields.String(required=True)
    service = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "not_ready"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "broker, database: 'ok' or what failed."})


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
