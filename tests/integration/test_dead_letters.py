"""Messages that cannot be handled are retried a bounded number of times,
then parked in the service's dead-letter queue, from where they can be
listed and replayed once the cause is fixed."""
import requests

from services.common.messaging.events import new_event
from services.inventory import domain
from tests.support import eventually, tokens


def test_a_failing_event_is_dead_lettered_after_bounded_attempts_and_replays_after_the_fix(
        running, rpc, service_config, publish_raw, monkeypatch):
    rpc.inventory.create_product("P-1", "Pan", 2500, 3)
    eventually(lambda: rpc.orders.list_catalogue(), message="catalogue copy")

    attempts = []
    real = domain.quantities_by_sku

    def broken(lines):
        attempts.append(1)
        raise RuntimeError("bug in reservation code")
    monkeypatch.setattr(domain, "quantities_by_sku", broken)

    response = requests.post("http://{}/orders".format(service_config["WEB_SERVER_ADDRESS"]), timeout=10,
                             headers=tokens.customer("pat@example.com"), json={"customer_email": "pat@example.com", "lines": [{"sku": "P-1", "quantity": 1}]})
    order_id = response.json()["id"]

    letters = eventually(lambda: rpc.inventory.list_dead_letters(), message="dead letter")
    assert len(attempts) == service_config["MAX_DELIVERY_ATTEMPTS"] == 3
    assert len(letters) == 1
    assert letters[0]["original_queue"] == "evt-orders-order_created--inventory.reserve_stock"
    assert letters[0]["error_type"] == "RuntimeError"
    assert letters[0]["error_message"] == "bug in reservation code"
    assert letters[0]["attempts"] == 3
    assert letters[0]["body"]["data"]["order_id"] == order_id
    assert rpc.inventory.list_dead_letters() == letters, "listing must not consume"
    assert rpc.orders.get_order(order_id)["status"] == "pending"

    monkeypatch.setattr(domain, "quantities_by_sku", real)  # the fix is deployed
    assert rpc.inventory.replay_dead_letters() == 1
    eventually(lambda: rpc.orders.get_order(order_id)["status"] == "confirmed", message="confirmed after replay")
    assert rpc.inventory.list_dead_letters() == []
    assert rpc.inventory.get_stock("P-1")["reserved"] == 1


def test_malformed_messages_go_straight_to_the_dead_letter_queue_and_the_consumer_goes_on(
        running, rpc, service_config, publish_raw):
    publish_raw("orders", "order_created", "not an event at all")
    publish_raw("orders", "order_created", {"id": "x", "type": "order_created", "source": "orders",
                                            "occurred_at": "now", "data": {"order_id": "o-1", "lines": "none"}})
    publish_raw("orders", "order_cancelled", new_event("orders", "order_cancelled", {"no_order_id": 1}))
    letters = eventually(lambda: len(rpc.inventory.list_dead_letters()) == 3 and rpc.inventory.list_dead_letters(),
                         message="three dead letters")
    assert {letter["error_type"] for letter in letters} == {"MalformedMessage"}
    assert all(letter["attempts"] == 1 for letter in letters)

    rpc.inventory.create_product("OK-1", "Still works", 100, 1)
    eventually(lambda: rpc.orders.list_catalogue(), message="consumers still consuming")
