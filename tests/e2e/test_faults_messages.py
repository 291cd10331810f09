"""Malformed messages published straight to the services' queues neither
crash nor stall them: each ends in the service's dead-letter queue, the
undecodable ones (bad JSON, a content type nobody accepts) included, which
kombu alone would have acked and dropped; orders keep flowing past them."""
import pytest
from kombu import Connection

from services.common.messaging.deadletters import list_dead_letters

QUEUES = {
    "inventory": "evt-orders-order_created--inventory.reserve_stock",
    "orders": "evt-inventory-stock_reserved--orders.confirm_order",
    "notifications": "evt-orders-order_confirmed--notifications.order_confirmed",
}

GARBAGE = [
    (b"{not json", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'{"id": "x", "type": "order_created"}', "application/json"),
    (b'{"id": "y", "type": "t", "source": "s", "occurred_at": "now", "data": {"order_id": 7}}',
     "application/json"),
    (b"", "application/json"),
    (b"\x80\x04garbage", "application/x-python-serialize"),
    (b"plain words", "text/plain"),
]


def publish_garbage(amqp_uri):
    with Connection(amqp_uri) as connection:
        producer = connection.Producer()
        for queue in QUEUES.values():
            for body, content_type in GARBAGE:
                producer.publish(body, exchange="", routing_key=queue, content_type=content_type,
                                 content_encoding="binary" if content_type != "application/json" else "utf-8",
                                 retry=True)


# The garbage published once for the module, orders streaming; each test below checks
# one thing that holds after it.

@pytest.fixture(scope="module")
def garbage(module_fault_run):
    run = module_fault_run()
    with run.streaming(rate=20) as stream:
        stream.accepted_after(10)
        publish_garbage(run.system.config["AMQP_URI"])
        stream.accepted_after(len(stream.accepted) + 30)
    return run


def test_every_order_is_still_accepted(garbage):
    assert set(garbage.stream.outcomes) == {202}, garbage.stream.outcomes


def test_every_accepted_order_still_settles(garbage):
    garbage.assert_everything_settled()


def test_no_service_dies_of_it(garbage):
    for (service, _), process in garbage.system.processes.items():
        assert process.poll() is None, "{} died".format(service)


def test_each_malformed_message_ends_in_its_services_dead_letters(garbage):
    garbage.assert_everything_settled()  # everything that was going to be handled has been
    for service in QUEUES:
        letters = list_dead_letters(garbage.system.config["AMQP_URI"], service, limit=50)
        assert len(letters) == len(GARBAGE), (service, [letter["error_message"] for letter in letters])
        assert all(letter["original_queue"] == QUEUES[service] for letter in letters)
