import pytest

from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.messaging.events import new_event
from services.orders.service import OrdersService
from tests.support import service_worker


@pytest.fixture
def orders(database, outbox):
    service = service_worker(OrdersService, db=database("orders"), outbox=outbox,
                             config={"MAX_LINE_QUANTITY": 10, "MAX_ORDER_LINES": 3})
    service.correlation_id = "req-1"
    service.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "A", "name": "Apple", "price": 150, "active": True, "version": 1}))
    return service


def test_an_order_is_stored_pending_with_prices_and_announced(orders, outbox):
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 2}])
    assert order["status"] == "pending"
    assert order["total"] == 300
    assert order["correlation_id"] == "req-1"
    assert outbox.events == [("order_created", {
        "order_id": order["id"], "customer_email": "ann@example.com", "total": 300,
        "lines": [{"sku": "A", "quantity": 2, "unit_price": 150}]})]
    assert orders.get_order(order["id"])["lines"][0]["unit_price"] == 150


@pytest.mark.parametrize("email,lines,field", [
    ("not-an-email", [{"sku": "A", "quantity": 1}], "customer_email"),
    ("a@example.com", [], "lines"),
    ("a@example.com", [{"sku": "A", "quantity": 0}], "lines"),
    ("a@example.com", [{"sku": "A", "quantity": 11}], "lines"),
    ("a@example.com", [{"sku": "A", "quantity": "2"}], "lines"),
    ("a@example.com", [{"sku": "A", "quantity": 1, "colour": "red"}], "lines"),
    ("a@example.com", [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}], "lines"),
    ("a@example.com", [{"sku": "NOPE", "quantity": 1}], "lines"),
])
def test_bad_orders_are_refused_naming_the_field_and_nothing_is_stored(orders, outbox, email, lines, field):
    with pytest.raises(InvalidInput) as error:
        orders.create_order(email, lines)
    assert field in error.value.details
    assert outbox.events == []
    assert orders.list_orders() == []


def test_inventory_answers_move_the_order_once(orders, outbox):
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 1}])
    reserved = new_event("inventory", "stock_reserved", {"order_id": order["id"]})
    orders.confirm_order(reserved)
    orders.confirm_order(reserved)
    assert orders.get_order(order["id"])["status"] == "confirmed"
    assert outbox.types() == ["order_created", "order_confirmed"]


def test_the_answer_to_a_new_order_is_the_stored_order_as_read_back(orders):
    # placing builds its answer from the values it inserts, without the ORM:
    # it must be exactly what reading the order gives
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 2}])
    assert order == orders.get_order(order["id"])
    assert order["lines"] == [{"sku": "A", "name": "Apple", "quantity": 2, "unit_price": 150, "line_total": 300}]
    assert [(change["from"], change["to"]) for change in order["history"]] == [(None, "pending")]


@pytest.mark.parametrize("answer,status,reasons", [
    ("stock_reserved", "confirmed", None),
    ("stock_rejected", "rejected", [{"sku": "A", "reason": "insufficient_stock", "requested": 2,
                                     "available": 1}]),
])
def test_inventory_answers_announce_the_order_as_stored(orders, outbox, answer, status, reasons):
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 2}])
    data = {"order_id": order["id"]}
    if reasons is not None:
        data["reasons"] = reasons
    handler = orders.confirm_order if answer == "stock_reserved" else orders.reject_order
    handler(new_event("inventory", answer, data))
    stored = orders.get_order(order["id"])
    assert stored["status"] == status and stored["reasons"] == reasons
    assert [(change["from"], change["to"]) for change in stored["history"]] == [(None, "pending"), ("pending", status)]
    event_type, payload = outbox.events[-1]
    assert event_type == "order_" + status
    # the order as stored, less its history, named by ``order_id`` only (as order_created names it)
    expected = {("order_id" if key == "id" else key): value for key, value in stored.items() if key != "history"}
    assert payload == expected


def test_cancel_twice_is_a_conflict_not_a_second_release(orders, outbox):
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 1}])
    orders.confirm_order(new_event("inventory", "stock_reserved", {"order_id": order["id"]}))
    assert orders.cancel_order(order["id"])["status"] == "cancelled"
    with pytest.raises(Conflict) as error:
        orders.cancel_order(order["id"])
    assert error.value.details == {"status": ["cancelled"]}
    assert outbox.types().count("order_cancelled") == 1
    with pytest.raises(NotFound):
        orders.cancel_order("no-such-order")


def test_a_late_answer_for_a_cancelled_order_changes_nothing(orders, outbox):
    order = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 1}])
    orders.cancel_order(order["id"])
    orders.confirm_order(new_event("inventory", "stock_reserved", {"order_id": order["id"]}))
    assert orders.get_order(order["id"])["status"] == "cancelled"
    assert outbox.types() == ["order_created", "order_cancelled"]


def test_older_catalogue_versions_never_overwrite_newer(orders):
    orders.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "A", "name": "Apple", "price": 175, "active": True, "version": 3}))
    orders.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "A", "name": "Apple", "price": 120, "active": True, "version": 2}))
    assert orders.list_catalogue() == [{"sku": "A", "name": "Apple", "price": 175, "active": True, "version": 3}]
