"""The orders API's logic under worker_factory (real SQLite, no broker):
idempotency keys, keyset pages with ties, and the OpenAPI document covering
every route with the configured limits. (Catalogue writes are inventory's own
admin API: tests/unit/test_inventory_http.py.)"""
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.common.errors import Conflict, InvalidInput
from services.common.messaging.events import new_event, utcnow
from services.orders import handlers
from services.common.http.auth import TokenVerifier
from services.orders.models import IdempotencyKey, Order
from services.orders.openapi import build_spec, openapi_document
from services.orders.schemas import decode_cursor, encode_cursor
from services.orders.service import OrdersService
from services.orders.settings import OrdersSettings
from tests.support import http_routes, service_worker, tokens


@pytest.fixture
def orders(database, outbox):
    service = service_worker(OrdersService, db=database("orders"), outbox=outbox,
                             config={"MAX_LINE_QUANTITY": 10, "MAX_ORDER_LINES": 3,
                                     "IDEMPOTENCY_KEY_TTL": 60, **tokens.SETTINGS})
    service.auth = TokenVerifier(tokens.SETTINGS)
    service.correlation_id = "req-1"
    service.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "A", "name": "Apple", "price": 150, "active": True, "version": 1}))
    return service


def place_once(orders, body, key):
    """The use case behind POST /orders with an Idempotency-Key, as the HTTP handler calls it."""
    data = handlers.order_request(body, orders.settings)
    return handlers.place_order_once(orders.uow, data, key, orders.settings.idempotency_key_ttl,
                                     orders.correlation_id)


def find(orders, query):
    with orders.uow as uow:
        return handlers.find_orders(uow, query)


def body(quantity=1, email="ann@example.com"):
    return {"customer_email": email, "lines": [{"sku": "A", "quantity": quantity}]}


def test_the_same_key_and_body_replays_the_first_answer_without_a_second_order(orders, outbox):
    status, first, replayed = place_once(orders, body(), "key-1")
    assert (status, replayed) == (202, False)
    # same content, other key order and spacing: the same request
    assert place_once(orders, {"lines": [{"quantity": 1, "sku": "A"}],
                                    "customer_email": "ann@example.com"}, "key-1") == (202, first, True)
    assert outbox.types() == ["order_created"]
    assert len(orders.list_orders()) == 1


def test_the_same_key_with_another_body_is_a_conflict(orders, outbox):
    place_once(orders, body(1), "key-1")
    with pytest.raises(Conflict) as error:
        place_once(orders, body(2), "key-1")
    assert "Idempotency-Key" in error.value.details
    assert outbox.types() == ["order_created"]


def test_an_invalid_body_is_refused_and_does_not_use_up_the_key(orders):
    with pytest.raises(InvalidInput):
        place_once(orders, body(99), "key-1")
    assert place_once(orders, body(2), "key-1")[2] is False


def test_expired_keys_are_free_again_and_purged(orders, outbox):
    place_once(orders, body(1), "old")
    place_once(orders, body(1), "fresh")
    with orders.db.get_session() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old")
                        .values(created_at=utcnow() - timedelta(seconds=61)))
    status, order, replayed = place_once(orders, body(2), "old")
    assert (status, replayed) == (202, False) and order["lines"][0]["quantity"] == 2

    with orders.db.get_session() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "fresh")
                        .values(created_at=utcnow() - timedelta(seconds=61)))
    assert orders.purge_idempotency_keys() == 1
    with orders.db.get_session() as session:
        assert [record.key for record in session.query(IdempotencyKey)] == ["old"]


def test_totals_beyond_a_32_bit_column_are_refused(orders):
    orders.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "GOLD", "name": "Gold", "price": 300_000_000, "active": True, "version": 1}))
    with pytest.raises(InvalidInput) as error:
        orders.create_order("ann@example.com", [{"sku": "GOLD", "quantity": 10}])
    assert "lines" in error.value.details


def test_pages_follow_created_at_then_id_even_when_timestamps_tie(orders):
    ids = [orders.create_order("ann@example.com", [{"sku": "A", "quantity": 1}])["id"] for _ in range(7)]
    same_moment = utcnow()
    with orders.db.get_session() as session:  # five orders in the same microsecond
        session.execute(update(Order).where(Order.id.in_(ids[1:6])).values(created_at=same_moment))
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": decode_cursor(cursor)} if cursor else {})}
        page = find(orders, query)
        seen += [order["id"] for order in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    tied = [order_id for order_id in seen if order_id in ids[1:6]]
    assert tied == sorted(ids[1:6], reverse=True)


def test_cursors_are_opaque_round_trips_and_forgeries_are_refused():
    moment = utcnow()
    assert decode_cursor(encode_cursor(moment, "abc")) == (moment, "abc")
    assert decode_cursor(encode_cursor(moment.replace(tzinfo=None), "abc")) == (moment, "abc")
    from marshmallow import ValidationError
    for forged in ("", "!!!", "bm90LWpzb24", "WzEsMl0", "WyIyMDI2LTAxLTAxIiwgImEiXQ"):
        with pytest.raises(ValidationError):
            decode_cursor(forged)


def test_orders_serves_no_catalogue_writes():
    """Catalogue writes are inventory's (its admin API): orders' broker user needs none of its write RPCs."""
    assert {path for method, path in http_routes(OrdersService) if path.startswith("/products")} == {"/products", "/products/{sku}"}
    assert {method for method, path in http_routes(OrdersService) if path.startswith("/products")} == {"get"}


def test_the_document_describes_every_route_and_only_those():
    doc = build_spec().to_dict()
    documented = {(method, path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    assert documented == http_routes(OrdersService)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert "405" in operation["responses"], (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(operation["responses"]), (method, path)
            assert "security" in operation, (method, path)  # public ones say so: []
            if operation["security"]:
                assert operation["security"] == [{"bearerAuth": []}]
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]}
    public = {(method, path) for path, item in doc["paths"].items() for method, operation in item.items()
              if method != "parameters" and operation["security"] == []}
    assert public == {("get", "/products"), ("get", "/products/{sku}"), ("get", "/health"),
                      ("get", "/ready"), ("get", "/openapi.json")}


def test_the_document_carries_the_configured_limits():
    doc = openapi_document(OrdersSettings.from_config({"MAX_LINE_QUANTITY": 7, "MAX_ORDER_LINES": 2}))
    place = doc["components"]["schemas"]["PlaceOrder"]
    assert place["properties"]["lines"]["maxItems"] == 2
    assert place["additionalProperties"] is False
    line = doc["components"]["schemas"]["Line"]
    assert (line["properties"]["quantity"]["minimum"], line["properties"]["quantity"]["maximum"]) == (1, 7)
    assert doc["components"]["schemas"]["Error"]["required"] == ["details", "error", "message"]


def test_an_empty_cursor_is_the_first_page():
    from services.orders.schemas import ListOrdersSchema
    assert ListOrdersSchema().load({"cursor": ""}) == {"cursor": None, "limit": 20}
