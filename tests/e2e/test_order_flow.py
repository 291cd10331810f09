"""The whole system as real processes: an order placed over HTTP travels
through inventory and notifications and comes back confirmed or rejected."""
from tests.support import eventually


def final(system, order_id):
    order = system.order(order_id)
    return order if order["status"] != "pending" else None


def test_order_is_confirmed_stock_reserved_and_customer_notified(system):
    system.start()
    system.create_products(("E2E-1", "Thing", 1250, 5))

    response = system.place_order("ann@example.com", [("E2E-1", 2)])
    assert response.status_code == 202, response.text
    placed = response.json()
    assert placed["status"] == "pending"
    assert placed["total"] == 2500
    assert placed["lines"] == [{"sku": "E2E-1", "name": "Thing", "quantity": 2,
                                "unit_price": 1250, "line_total": 2500}]
    assert response.headers["X-Request-ID"]

    order = eventually(lambda: final(system, placed["id"]), message="order settled")
    assert order["status"] == "confirmed"
    assert [change["to"] for change in order["history"]] == ["pending", "confirmed"]

    with system.rpc() as rpc:
        assert rpc.inventory.get_stock("E2E-1") == {
            "sku": "E2E-1", "on_hand": 5, "reserved": 2, "available": 3}
        notes = eventually(lambda: rpc.notifications.list_notifications(order_id=placed["id"]),
                           message="notification")
    assert len(notes) == 1
    assert notes[0]["recipient"] == "ann@example.com"
    assert notes[0]["event_type"] == "order_confirmed"
    assert "confirmed" in notes[0]["subject"]


def test_short_stock_rejects_the_whole_order_and_reserves_nothing(system):
    system.start()
    system.create_products(("E2E-A", "Plenty", 100, 50), ("E2E-B", "Scarce", 200, 1))

    response = system.place_order("bob@example.com", [("E2E-A", 3), ("E2E-B", 2)])
    assert response.status_code == 202, response.text

    order = eventually(lambda: final(system, response.json()["id"]), message="order settled")
    assert order["status"] == "rejected"
    assert order["reasons"] == [{"sku": "E2E-B", "reason": "insufficient_stock",
                                 "requested": 2, "available": 1}]
    with system.rpc() as rpc:
        assert rpc.inventory.get_stock("E2E-A")["reserved"] == 0
        assert rpc.inventory.get_stock("E2E-B")["reserved"] == 0
        notes = eventually(lambda: rpc.notifications.list_notifications(order_id=order["id"]),
                           message="notification")
    assert notes[0]["event_type"] == "order_rejected"
