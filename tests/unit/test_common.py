import pytest
from marshmallow import Schema, fields

from services.common.consumers import backoff_seconds
from services.common.db import redact
from services.common.events import MalformedMessage, new_event, parse_event


class Data(Schema):
    order_id = fields.String(required=True)


def test_events_round_trip_through_the_envelope():
    body = new_event("orders", "order_created", {"order_id": "o-1"})
    event = parse_event(body, Data())
    assert event.id == body["id"] and event.type == "order_created" and event.source == "orders"
    assert event.data == {"order_id": "o-1"}


@pytest.mark.parametrize("body", [None, "text", [], {"id": "x"},
                                  dict(new_event("orders", "t", {}), data={"order_id": 5})])
def test_malformed_events_are_refused_for_good(body):
    with pytest.raises(MalformedMessage):
        parse_event(body, Data())


def test_each_event_gets_its_own_id():
    assert new_event("a", "t", {})["id"] != new_event("a", "t", {})["id"]


def test_backoff_grows_and_is_capped():
    for attempt in range(1, 10):
        delay = backoff_seconds(attempt, base=0.5, cap=4)
        assert 0.25 <= delay <= min(4, 0.5 * 2 ** (attempt - 1))


def test_passwords_never_reach_logs():
    assert redact("postgresql://app:s3cret@db:5432/orders") == "postgresql://app:***@db:5432/orders"
    assert redact("sqlite:///var/orders.sqlite3") == "sqlite:///var/orders.sqlite3"
