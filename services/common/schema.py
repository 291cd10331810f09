"""Marshmallow pieces every service's schemas use."""
from marshmallow import ValidationError, fields

from services.common.errors import validation_error
from services.common.messaging.events import as_utc


class UtcDateTime(fields.DateTime):
    """ISO 8601 with an explicit offset; naive values (SQLite) are UTC."""

    def _serialize(self, value, attr, obj, **kwargs):
        return super()._serialize(as_utc(value), attr, obj, **kwargs)


def load_input(schema, data, message="The request is not valid."):
    """``schema.load(data)``, or InvalidInput naming each field that is wrong."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise validation_error(exc, message) from None
