from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from services.common.schema import UtcDateTime
from services.common.validation import MAX_EMAIL, MAX_INT32, MAX_ORDER_ID, Email, FullMatch, Lowercase, SafeString

from . import domain

PHONE = FullMatch(r"^\+[1-9][0-9]{6,14}$",
                        error="Use the international format: '+', country code and number, digits only.")


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
    requested = fields.Integer(load_default=None)
    available = fields.Integer(load_default=None)


class OrderEventSchema(_Event):
    """Events ``order_confirmed``, ``order_rejected``, ``order_cancelled``."""

    id = fields.String(required=True)
    status = fields.String(required=True)
    customer_email = fields.Email(required=True)  # orders sends it in normal form; older events as they were
    lines = fields.List(fields.Nested(OrderLineSchema), required=True)
    total = fields.Integer(required=True)
    reasons = fields.List(fields.Nested(ShortfallSchema), allow_none=True, load_default=None)

    @pre_load
    def order_id_as_id(self, data, **kwargs):
        """Order events name their order ``order_id`` (and, earlier, only ``id``)."""
        if isinstance(data, dict) and "id" not in data and "order_id" in data:
            data = dict(data, id=data["order_id"])
        return data


class ListNotificationsSchema(Schema):
    order_id = SafeString(allow_none=True, validate=validate.Length(max=MAX_ORDER_ID))
    recipient = Lowercase(allow_none=True, validate=validate.Length(max=MAX_EMAIL),
                          metadata={"description": "An address, compared as orders stores it (lowercase)."})
    status = fields.String(allow_none=True, validate=validate.OneOf(domain.STATUSES))
    channel = fields.String(allow_none=True, validate=validate.OneOf(domain.CUSTOMER_CHANNELS + (domain.LOG,)))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class NotificationIdSchema(Schema):
    notification_id = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_INT32))


class PreferencesSchema(Schema):
    """What ``set_preferences`` accepts; an empty channel list means "tell me nothing"."""

    class Meta:
        unknown = RAISE

    customer_email = Email(required=True)
    channels = fields.List(fields.String(validate=validate.OneOf(domain.CUSTOMER_CHANNELS)), required=True)
    phone = fields.String(allow_none=True, load_default=None, validate=PHONE)
    device_token = SafeString(allow_none=True, load_default=None, validate=validate.Length(min=1, max=512))

    @validates_schema
    def addresses_for_channels(self, data, **kwargs):
        channels = data.get("channels") or []
        repeated = sorted({channel for channel in channels if channels.count(channel) > 1})
        if repeated:
            raise ValidationError(["Each channel may appear once; repeated: {}.".format(", ".join(repeated))],
                                  "channels")
        errors = {}
        for channel, field in domain.ADDRESS_FIELD.items():
            if channel in channels and not data.get(field):
                errors[field] = ["Required when channels include {}.".format(channel)]
        if errors:
            raise ValidationError(errors)


class PreferencesOutSchema(Schema):
    customer_email = fields.String()
    channels = fields.List(fields.String())
    phone = fields.String(allow_none=True)
    device_token = fields.String(allow_none=True)
    updated_at = UtcDateTime(allow_none=True)


class AttemptSchema(Schema):
    number = fields.Integer()
    at = UtcDateTime()
    outcome = fields.String()
    error = fields.String(allow_none=True)
    duration_ms = fields.Float(allow_none=True)


class NotificationSchema(Schema):
    id = fields.Integer()
    event_id = fields.String()
    event_type = fields.String()
    order_id = fields.String()
    recipient = fields.String()
    channel = fields.String()
    address = fields.String(allow_none=True)
    subject = fields.String()
    body = fields.String()
    status = fields.String()
    attempt_count = fields.Integer()
    last_error = fields.String(allow_none=True)
    next_attempt_at = UtcDateTime(allow_none=True)
    correlation_id = fields.String(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    sent_at = UtcDateTime(allow_none=True)
    attempts = fields.List(fields.Nested(AttemptSchema))
