"""The saga's guarantees with real processes: no overselling with competing
inventory processes, nothing lost while a service is down, and a clear 503
when a synchronous answer cannot be had."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from kombu import Connection

from tests.support import eventually


def statuses(system, order_ids):
    with system.rpc() as rpc:
        return [rpc.orders.get_order(order_id)["status"] for order_id in order_ids]


def consumers(system, queue):
    with Connection(system.config["AMQP_URI"]) as connection:
        return connection.channel().queue_declare(queue, passive=True).consumer_count


def all_final(system, order_ids):
    found = statuses(system, order_ids)
    return found if "pending" not in found else None


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_inventory_processes_never_oversell(system):
    system.start("orders", "notifications")
    system.start("inventory", instance=1)
    system.start("inventory", instance=2)
    # ready means inventory answers RPC, which the first process already does:
    # wait until both consume order_created, or the first may take all the work
    eventually(lambda: consumers(system, "evt-orders-order_created--inventory.reserve_stock") == 2,
               message="both inventory processes consuming order_created")
    system.create_products(("HOT-1", "Concert ticket", 5000, 50))

    def place(n):
        return system.place_order("fan{}@example.com".format(n), [("HOT-1", 1)])

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(place, range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    order_ids = [r.json()["id"] for r in responses]

    final = eventually(lambda: all_final(system, order_ids), timeout=60, message="200 orders settled")
    assert final.count("confirmed") == 50
    assert final.count("rejected") == 150
    with system.rpc() as rpc:
        assert rpc.inventory.get_stock("HOT-1") == {
            "sku": "HOT-1", "on_hand": 50, "reserved": 50, "available": 0}
    for (service, instance) in [("inventory", 1), ("inventory", 2)]:
        with open("{}/{}.{}.log".format(system.log_dir, service, instance)) as log:
            text = log.read()
            assert "stock reserved" in text or "stock rejected" in text, "both processes must take work"


def test_orders_placed_while_inventory_is_down_complete_when_it_returns(system):
    system.start()
    system.create_products(("DOWN-1", "Umbrella", 1500, 60))
    system.stop("inventory")

    responses = [system.place_order("rain@example.com", [("DOWN-1", 1)]) for _ in range(100)]
    assert [r.status_code for r in responses] == [202] * 100
    order_ids = [r.json()["id"] for r in responses]
    time.sleep(0.5)
    assert set(statuses(system, order_ids)) == {"pending"}

    system.start("inventory")
    final = eventually(lambda: all_final(system, order_ids), timeout=60, message="100 orders settled")
    assert final.count("confirmed") == 60 and final.count("rejected") == 40
    with system.rpc() as rpc:
        stock = rpc.inventory.get_stock("DOWN-1")
    assert stock["on_hand"] == stock["reserved"] + stock["available"] == 60
    assert stock["reserved"] == 60


def test_orders_confirm_while_notifications_is_down_and_notices_follow(system):
    system.start()
    system.create_products(("QUIET-1", "Book", 800, 5))
    system.stop("notifications")

    order_id = system.place_order("reader@example.com", [("QUIET-1", 1)]).json()["id"]
    eventually(lambda: system.order(order_id)["status"] == "confirmed", message="confirmed")

    system.start("notifications")
    with system.rpc() as rpc:
        notes = eventually(lambda: rpc.notifications.list_notifications(order_id=order_id),
                           message="notification after restart")
    assert [note["event_type"] for note in notes] == ["order_confirmed"]


def test_a_service_that_does_not_answer_gives_a_clear_503(system):
    system.start()
    system.stop("inventory")
    started = time.monotonic()
    response = requests.get(system.url("/products"), timeout=30)
    waited = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable"
    assert response.json()["details"]["service"] == "inventory"
    assert waited < system.config["RPC_TIMEOUT"] + 2
    assert requests.get(system.url("/health"), timeout=5).status_code == 200
