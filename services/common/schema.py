"""Marshmallow pieces every service's schemas use."""
from datetime import timezone

from marshmallow import ValidationError, fields

from .errors import validation_error


class UtcDateTime(fields.DateTime):
    """ISO 8601 with an explicit offset; naive values (SQLite) are UTC."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value, attr, obj, **kwargs)


def load_input(schema, data):
    """``schema.load(data)``, or InvalidInput naming each field that is wrong."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
