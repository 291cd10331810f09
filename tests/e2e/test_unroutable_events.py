"""Issue 11, kind 1: an event that reaches no queue is not lost.

RabbitMQ confirms a persistent message that no queue received, so a confirm
is not a delivery. The outbox publishes ``mandatory`` and keeps a returned
event unsent, retrying it with a backoff, until its consumer's queue exists.
Real ``nameko run`` processes, the shared broker on a private vhost.
"""
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import text

from services.common.db.database import make_engine
from services.common.messaging.events import utcnow
from tests.support import eventually, free_port

ORDER_CREATED_QUEUE = "evt-orders-order_created--inventory.reserve_stock"


def delete_queue(request, service_config, name):
    """``rabbitmqctl delete_queue``, through the management API the suite already needs."""
    ctl = request.config.getoption("RABBIT_API_URI").rstrip("/")
    vhost = service_config["AMQP_URI"].rsplit("/", 1)[1]
    response = requests.delete("{}/api/queues/{}/{}".format(ctl, quote(vhost, safe=""), quote(name, safe="")),
                               timeout=10)
    assert response.status_code in (200, 204), response.text


def settled(system, order_id):
    order = system.order(order_id)
    return order if order["status"] != "pending" else None


def notified_once(system, order_ids):
    with system.rpc() as rpc:
        for order_id in order_ids:
            notes = rpc.notifications.list_notifications(order_id=order_id)
            if len(notes) != 1:
                return False
    return True


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_order_placed_while_its_consumer_queue_is_deleted_is_confirmed_once_it_returns(
        system, service_config, request):
    metrics_port = free_port()
    system.env["ORDERS_METRICS_PORT"] = str(metrics_port)
    system.start()
    system.create_products(("UNR-1", "Thing", 500, 10))
    system.stop("inventory")
    delete_queue(request, service_config, ORDER_CREATED_QUEUE)

    response = system.place_order("ann@example.com", [("UNR-1", 2)])
    assert response.status_code == 202, response.text
    order_id = response.json()["id"]

    # the event reached no queue: it must be visible as waiting, not marked sent
    def waiting():
        with system.rpc() as rpc:
            events = rpc.orders.list_waiting_events(10)
        return [event for event in events if event["event_type"] == "order_created" and event["unroutable"]]
    assert eventually(waiting, message="order_created listed as unroutable")
    metrics = eventually(lambda: 'outbox_unroutable_events{event_type="order_created",service="orders"} 1.0'
                         in requests.get("http://127.0.0.1:{}/metrics".format(metrics_port), timeout=5).text, message="unroutable metric")
    assert metrics

    system.start("inventory")
    order = eventually(lambda: settled(system, order_id), timeout=30, message="order settled")
    assert order["status"] == "confirmed"
    assert eventually(lambda: notified_once(system, [order_id]), timeout=20, message="notified once")
    with system.rpc() as rpc:
        assert rpc.inventory.get_stock("UNR-1")["reserved"] == 2
        eventually(lambda: rpc.orders.list_waiting_events(10) == [], message="outbox drained")
        assert len(rpc.notifications.list_notifications(order_id=order_id)) == 1


def seed_product(system, sku, price, stock):
    """A product both sides know, written straight into their databases: in a
    first deployment nothing has run yet, so no service has declared a queue."""
    now = utcnow()
    for key, statement, values in (
            ("orders:OrdersBase",
             "INSERT INTO catalogue (sku, name, price, active, version) VALUES (:sku, 'Thing', :price, :active, 1)",
             {"sku": sku, "price": price, "active": True}),
            ("inventory:InventoryBase",
             "INSERT INTO products (sku, name, price, on_hand, reserved, active, version, created_at, updated_at) "
             "VALUES (:sku, 'Thing', :price, :stock, 0, :active, 1, :now, :now)",
             {"sku": sku, "price": price, "stock": stock, "active": True, "now": now})):
        engine = make_engine(system.config["DB_URIS"][key])
        try:
            with engine.begin() as connection:
                connection.execute(text(statement), values)
        finally:
            engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_orders_started_alone_then_inventory_and_notifications_for_the_first_time(system):
    seed_product(system, "FIRST-1", 300, 100)
    system.start("orders")  # a fresh vhost: nobody has declared inventory's or notifications' queues
    accepted = []
    for n in range(5):
        response = system.place_order("first{}@example.com".format(n), [("FIRST-1", 1)])
        assert response.status_code == 202, response.text
        accepted.append(response.json()["id"])
    with system.rpc() as rpc:
        assert eventually(lambda: len([event for event in rpc.orders.list_waiting_events(10)
                                       if event["unroutable"]]) == 5, message="five unroutable order_created")

    system.start("inventory", "notifications")
    for order_id in accepted:
        order = eventually(lambda: settled(system, order_id), timeout=30, message="order settled")
        assert order["status"] == "confirmed"
    assert eventually(lambda: notified_once(system, accepted), timeout=30, message="each notified once")
    with system.rpc() as rpc:
        assert rpc.inventory.get_stock("FIRST-1")["reserved"] == 5
        for order_id in accepted:  # exactly once, also after every retry has settled
            assert len(rpc.notifications.list_notifications(order_id=order_id)) == 1
