"""QUEUE_TYPE: every durable queue the services consume is a classic or a quorum queue,
and retries (per-message TTL) and dead letters work on both (issue 14).

Runs on the shared RabbitMQ (3.10), a vhost per test; a quorum queue needs
no cluster, one node is a cluster of one.
"""
import pytest
import requests

from services.inventory import domain
from tests.support import eventually, tokens


@pytest.fixture
def backend():
    return "sqlite"  # the queues are under test here, not the database


@pytest.fixture(params=["classic", "quorum"])
def queue_type(request):
    return request.param


@pytest.fixture
def service_config(service_config, queue_type):
    return dict(service_config, QUEUE_TYPE=queue_type)


def place(service_config, email, sku):
    response = requests.post("http://{}/orders".format(service_config["WEB_SERVER_ADDRESS"]), timeout=10,
                             headers=tokens.customer(email),
                             json={"customer_email": email, "lines": [{"sku": sku, "quantity": 1}]})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_retries_and_dead_letters_work_on_the_configured_queue_type(
        running, rpc, service_config, queue_type, rabbit_manager, rabbit_config, monkeypatch):
    rpc.inventory.create_product("Q-1", "Quill", 300, 10)
    eventually(lambda: rpc.orders.list_catalogue(), message="catalogue copy")

    real = domain.quantities_by_sku
    attempts = {}  # customer -> attempts to reserve their order

    def flaky(lines):
        """Fails the first attempt of every order, and every attempt of doomed@'s."""
        customer = flaky.customer
        attempts[customer] = attempts.get(customer, 0) + 1
        if customer.startswith("doomed") or attempts[customer] == 1:
            raise RuntimeError("reservation failed for {}".format(customer.split("@")[0]))
        return real(lines)

    # the handler does not see the email; the orders are placed one at a time
    flaky.customer = "retried@example.com"
    monkeypatch.setattr(domain, "quantities_by_sku", flaky)

    retried = place(service_config, "retried@example.com", "Q-1")
    eventually(lambda: rpc.orders.get_order(retried)["status"] == "confirmed", timeout=20,
               message="confirmed on its second attempt, after a trip through the retry queue")
    assert attempts["retried@example.com"] == 2

    flaky.customer = "doomed@example.com"
    doomed = place(service_config, "doomed@example.com", "Q-1")
    letters = eventually(lambda: rpc.inventory.list_dead_letters(), timeout=20, message="dead letter")
    assert attempts["doomed@example.com"] == service_config["MAX_DELIVERY_ATTEMPTS"] == 3
    assert [letter["body"]["data"]["order_id"] for letter in letters] == [doomed]
    assert rpc.orders.get_order(doomed)["status"] == "pending"

    monkeypatch.setattr(domain, "quantities_by_sku", real)  # the fix is deployed
    assert rpc.inventory.replay_dead_letters() == 1
    eventually(lambda: rpc.orders.get_order(doomed)["status"] == "confirmed", message="confirmed after replay")
    assert rpc.inventory.list_dead_letters() == []
    assert rpc.inventory.get_stock("Q-1")["reserved"] == 2

    # what the broker itself says it declared
    vhost = rabbit_config["vhost"]
    queues = {queue["name"]: queue for queue in rabbit_manager.get_queues(vhost)}
    consumed = [name for name in queues if name.startswith(("evt-", "rpc-")) or name.endswith(".dead-letters")]
    # the fixed-delay retry queues are named <queue>.backoff-<ms>ms; the first step was used
    retries = [name for name in consumed if name.startswith("evt-orders-order_created--inventory.reserve_stock.backoff-")]
    assert retries, consumed
    retry = retries[0]
    assert "inventory.dead-letters" in consumed and "rpc-inventory" in consumed
    assert {name: queues[name]["type"] for name in consumed} == {name: queue_type for name in consumed}
    assert all(queues[name]["durable"] and not queues[name]["auto_delete"] for name in consumed)
    # the services' own reply queues (not this test's standalone proxy's)
    replies = [queue for name, queue in queues.items()
               if name.startswith("rpc.reply-") and "standalone" not in name]
    assert replies and not any(queue["durable"] for queue in replies), "reply queues are transient"
    if queue_type == "quorum":
        assert queues[retry]["arguments"]["x-dead-letter-strategy"] == "at-least-once"
        assert queues[retry]["arguments"]["x-overflow"] == "reject-publish"
