"""The envelope every event travels in, whatever its type.

The payload of each type is defined by the marshmallow schemas of the
services that send and receive it; the envelope adds what infrastructure
needs: a unique id (for idempotent consumers), the type, the sender and when
it happened.
"""
import uuid
from collections import namedtuple
from datetime import datetime, timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields

Event = namedtuple("Event", "id type source occurred_at data")


class MalformedMessage(Exception):
    """A message that no number of retries can make valid."""


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True)
    type = fields.String(required=True)
    source = fields.String(required=True)
    occurred_at = fields.String(required=True)
    data = fields.Dict(required=True)


def utcnow():
    return datetime.now(timezone.utc)


def as_utc(moment):
    """``moment`` with its UTC offset: SQLite hands datetimes back naive (they are UTC)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def new_event(source, event_type, data):
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "source": source,
        "occurred_at": utcnow().isoformat(),
        "data": data,
    }


# one instance for every event every service reads (a schema keeps no state
# between loads; building one per event showed in the profiles)
_envelope_schema = EnvelopeSchema()


def parse_event(body, data_schema):
    """Validate an incoming event; raise MalformedMessage if it never will be."""
    if not isinstance(body, dict):
        raise MalformedMessage("event body is not an object: {!r}".format(type(body).__name__))
    try:
        envelope = _envelope_schema.load(body)
        data = data_schema.load(envelope["data"])
    except ValidationError as exc:
        raise MalformedMessage("invalid event: {}".format(exc.messages)) from exc
    return Event(envelope["id"], envelope["type"], envelope["source"], envelope["occurred_at"], data)
