"""Inventory alone in a container on the real broker: events in, events out."""
from kombu import Connection, Exchange, Queue
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_waiter

from services.common.messaging.events import new_event
from services.inventory.service import InventoryService
from tests.support import eventually


def test_an_order_created_event_becomes_a_published_stock_reserved_event(container_factory, service_config, rpc):
    container = container_factory(InventoryService, service_config)
    container.start()
    rpc.inventory.create_product("C-1", "Cup", 400, 2)

    with Connection(service_config["AMQP_URI"]) as connection:
        answers = Queue("test-answers", exchange=Exchange("inventory.events", type="topic", durable=True),
                        routing_key="stock_reserved", channel=connection.channel())
        answers.declare()
        dispatch = event_dispatcher(service_config)
        with entrypoint_waiter(container, "reserve_stock"):
            dispatch("orders", "order_created", new_event("orders", "order_created", {
                "order_id": "o-9", "lines": [{"sku": "C-1", "quantity": 2}]}))

        message = eventually(lambda: answers.get(no_ack=True, accept=["json"]), timeout=5,
                             message="stock_reserved published")
    body = message.payload
    assert body["type"] == "stock_reserved" and body["source"] == "inventory"
    assert body["data"] == {"order_id": "o-9", "lines": [{"sku": "C-1", "quantity": 2}]}
    assert message.properties["message_id"] == body["id"]
    assert rpc.inventory.get_stock("C-1")["available"] == 0
