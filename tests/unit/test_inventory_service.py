import pytest

from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.messaging.events import new_event
from services.inventory.service import InventoryService
from tests.support import service_worker


@pytest.fixture
def inventory(database, outbox):
    service = service_worker(InventoryService, db=database("inventory"), outbox=outbox)
    service.create_product("A", "Apple", 100, 5)
    service.create_product("B", "Banana", 50, 1)
    outbox.events.clear()
    return service


def order_created(order_id, *lines):
    return new_event("orders", "order_created", {
        "order_id": order_id, "lines": [{"sku": sku, "quantity": qty} for sku, qty in lines]})


def test_new_products_are_announced_for_other_services(database, outbox):
    service = service_worker(InventoryService, db=database("inventory"), outbox=outbox)
    product = service.create_product("A", "Apple", 100, 5)
    assert product == {"sku": "A", "name": "Apple", "price": 100, "on_hand": 5, "reserved": 0,
                       "available": 5, "active": True, "version": 1}
    assert outbox.events == [("product_changed", {"sku": "A", "name": "Apple", "price": 100,
                                                  "active": True, "version": 1})]


def test_bad_product_input_is_a_typed_error_naming_the_field(inventory):
    with pytest.raises(InvalidInput) as error:
        inventory.create_product("bad sku!", "", -1, 0)
    assert set(error.value.details) == {"sku", "name", "price"}
    with pytest.raises(Conflict):
        inventory.create_product("A", "Again", 1, 1)
    with pytest.raises(NotFound):
        inventory.get_stock("nope")


def test_an_order_that_fits_is_reserved_whole(inventory, outbox):
    inventory.reserve_stock(order_created("o-1", ("A", 2), ("B", 1)))
    assert inventory.get_stock("A")["reserved"] == 2
    assert inventory.get_stock("B")["available"] == 0
    assert outbox.events == [("stock_reserved", {"order_id": "o-1", "lines": [
        {"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]})]


def test_one_short_line_rejects_the_order_and_reserves_nothing(inventory, outbox):
    inventory.reserve_stock(order_created("o-1", ("A", 2), ("B", 2)))
    assert inventory.get_stock("A")["reserved"] == 0
    assert inventory.get_stock("B")["reserved"] == 0
    assert outbox.events == [("stock_rejected", {"order_id": "o-1", "reasons": [
        {"sku": "B", "reason": "insufficient_stock", "requested": 2, "available": 1}]})]


def test_the_same_event_twice_reserves_once(inventory, outbox):
    event = order_created("o-1", ("A", 2))
    inventory.reserve_stock(event)
    inventory.reserve_stock(event)
    assert inventory.get_stock("A")["reserved"] == 2
    assert outbox.types() == ["stock_reserved"]


def test_cancel_releases_once_and_a_late_order_created_reserves_nothing(inventory, outbox):
    inventory.reserve_stock(order_created("o-1", ("A", 2)))
    cancel = new_event("orders", "order_cancelled", {"order_id": "o-1"})
    inventory.release_stock(cancel)
    inventory.release_stock(cancel)
    inventory.release_stock(new_event("orders", "order_cancelled", {"order_id": "o-1"}))
    assert inventory.get_stock("A")["reserved"] == 0
    assert outbox.types() == ["stock_reserved", "stock_released"]

    inventory.release_stock(new_event("orders", "order_cancelled", {"order_id": "o-2"}))
    inventory.reserve_stock(order_created("o-2", ("A", 1)))
    assert inventory.get_stock("A")["reserved"] == 0
    assert inventory.get_reservation("o-2")["status"] == "cancelled"


def test_a_create_that_loses_a_race_for_its_sku_is_a_conflict(inventory, monkeypatch):
    # another process inserted "A" between this create's check and its insert
    from services.inventory import store
    with monkeypatch.context() as patched:
        patched.setattr(store, "product", lambda *args, **kwargs: None)
        with pytest.raises(Conflict) as error:
            inventory.create_product("A", "Apple again", 100, 5)
    assert error.value.details == {"sku": ["Already exists."]}
    assert inventory.get_product("A")["name"] == "Apple"
