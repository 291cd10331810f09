"""Each service on the real broker as its own user (services/common/messaging/broker_grants.py).

The users are created on the test's vhost through the management API, with
the grants production gets; the services run in-process, each container
with its own AMQP_URI.
"""
import json
import secrets
import time
import urllib.parse
import uuid

import amqp
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from services.common.messaging import broker_grants
from services.common.messaging.events import new_event
from services.inventory import handlers as inventory_handlers
from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders.service import OrdersService
from tests.support import eventually, tokens

SERVICES = {"orders": OrdersService, "inventory": InventoryService, "notifications": NotificationsService}
MANAGEMENT = "http://127.0.0.1:15672"
INVENTORY_QUEUE = "evt-orders-order_created--inventory.reserve_stock"


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def broker_users(service_config):
    """role -> that role's config (AMQP_URI with its own user), on the test's vhost; users removed after."""
    uri = service_config["AMQP_URI"]
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(uri).path[1:])
    prefix = "{}.".format(vhost)
    passwords = {role: secrets.token_urlsafe(16) for role in broker_grants.ROLES}
    management = broker_grants.Management(MANAGEMENT, "guest", "guest")
    broker_grants.provision(management, vhost, passwords, prefix)
    configs = {role: dict(service_config, AMQP_URI=broker_grants.amqp_uri_for(
        uri, broker_grants.user_name(role, prefix), passwords[role])) for role in broker_grants.ROLES}
    yield configs
    broker_grants.remove(management, prefix)


@pytest.fixture
def services(broker_users, container_factory):
    containers = {name: container_factory(cls, broker_users[name]) for name, cls in SERVICES.items()}
    for container in containers.values():
        container.start()
    return containers


@pytest.fixture
def operator(broker_users):
    with ClusterRpcProxy(broker_users[broker_grants.OPERATOR], timeout=10) as proxy:
        yield proxy


# an order_created for P-1 as orders would publish it: if it ever reached inventory, stock would be reserved
FORGED_ORDER = new_event("orders", "order_created", {"order_id": str(uuid.uuid4()),
                                                     "lines": [{"sku": "P-1", "quantity": 1}]})


def raw_channel(config):
    parts = urllib.parse.urlsplit(config["AMQP_URI"])
    connection = amqp.Connection("{}:{}".format(parts.hostname, parts.port or 5672),
                                 userid=urllib.parse.unquote(parts.username),
                                 password=urllib.parse.unquote(parts.password),
                                 virtual_host=urllib.parse.unquote(parts.path[1:]), confirm_publish=True)
    connection.connect()
    return connection


def url(config, path):
    return "http://{}{}".format(config["WEB_SERVER_ADDRESS"], path)


def test_the_order_saga_runs_end_to_end_with_a_user_per_service(services, operator, broker_users):
    config = broker_users["orders"]
    operator.inventory.create_product("P-1", "Pen", 150, 5)
    eventually(lambda: "P-1" in {item["sku"] for item in operator.orders.list_catalogue()}, message="catalogue")
    placed = requests.post(url(config, "/orders"), headers=tokens.customer("ann@example.com"), timeout=10,
                           json={"lines": [{"sku": "P-1", "quantity": 2}]})
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]
    assert eventually(lambda: operator.orders.get_order(order_id)["status"] == "confirmed", message="confirmed")
    assert operator.inventory.get_stock("P-1")["reserved"] == 2
    eventually(lambda: operator.notifications.list_notifications(order_id=order_id), message="notified")
    # orders read the catalogue over RPC (inventory.list_products: granted)
    assert requests.get(url(config, "/products/P-1"), timeout=10).json()["price"] == 150
    # the connections are the services' own users, not guest
    def users():  # the management API's connection list lags a few seconds behind
        connections = broker_grants.Management(MANAGEMENT, "guest", "guest").request(
            "GET", "/api/vhosts/{}/connections".format(urllib.parse.quote(
                urllib.parse.urlsplit(config["AMQP_URI"]).path[1:], safe="")))
        return {connection["user"] for connection in connections}
    own = {urllib.parse.unquote(urllib.parse.urlsplit(broker_users[name]["AMQP_URI"]).username) for name in SERVICES}
    eventually(lambda: own <= users(), timeout=15, message="connections as the services' users")
    assert "guest" not in users()


def admin_url(config, path):
    return "http://{}{}".format(config["INVENTORY_WEB_SERVER_ADDRESS"], path)


def test_catalogue_writes_go_to_inventory_s_admin_api_and_orders_needs_no_write_rights(
        services, operator, broker_users):
    """Orders' user may not call inventory's writes; an admin writes the catalogue on inventory's own API."""
    admin = tokens.admin()
    created = requests.post(admin_url(broker_users["inventory"], "/products"), headers=admin, timeout=10,
                            json={"sku": "P-1", "name": "Pen", "price": 150, "stock": 5})
    assert created.status_code == 201, created.text
    restocked = requests.post(admin_url(broker_users["inventory"], "/products/P-1/restock"),
                              json={"quantity": 100}, headers=admin, timeout=10)
    assert (restocked.status_code, restocked.json()["on_hand"]) == (200, 105), restocked.text
    # a customer's token is not enough, and orders' API has no catalogue writes at all
    refused = requests.post(admin_url(broker_users["inventory"], "/products/P-1/restock"), json={"quantity": 1},
                            headers=tokens.customer("ann@example.com"), timeout=10)
    assert (refused.status_code, refused.json()["error"]) == (403, "insufficient_scope")
    assert requests.post(url(broker_users["orders"], "/products"), headers=admin, timeout=10,
                         json={"sku": "P-2", "name": "Pad", "price": 10}).status_code == 405
    # orders learns of the product by event, and sells it
    eventually(lambda: "P-1" in {item["sku"] for item in operator.orders.list_catalogue()}, message="catalogue")
    assert requests.get(url(broker_users["orders"], "/products/P-1"), timeout=10).json()["on_hand"] == 105
    placed = requests.post(url(broker_users["orders"], "/orders"), headers=tokens.customer("ann@example.com"),
                           timeout=10, json={"lines": [{"sku": "P-1", "quantity": 1}]})
    assert placed.status_code == 202, placed.text
    eventually(lambda: operator.orders.get_order(placed.json()["id"])["status"] == "confirmed", message="confirmed")
    # orders' own broker user calling restock is refused by the broker, and nothing changes
    connection = raw_channel(broker_users["orders"])
    try:
        with pytest.raises(amqp.exceptions.AccessRefused):
            connection.channel().basic_publish(amqp.Message('{"args": ["P-1", 100], "kwargs": {}}'),
                                               exchange="nameko-rpc", routing_key="inventory.restock")
    finally:
        connection.close()
    assert operator.inventory.get_stock("P-1")["on_hand"] == 105
    # the operator may do what orders may not
    assert operator.inventory.restock("P-1", 3)["on_hand"] == 108


def test_other_services_may_not_call_orders_rpc_methods(services, operator, broker_users):
    """Orders' RPC methods (create, cancel, read any order) have no customer checks: only the operator calls them."""
    operator.inventory.create_product("P-1", "Pen", 150, 5)
    eventually(lambda: "P-1" in {item["sku"] for item in operator.orders.list_catalogue()}, message="catalogue")
    order = operator.orders.create_order("ann@example.com", [{"sku": "P-1", "quantity": 1}])
    for role in ("inventory", "notifications"):
        connection = raw_channel(broker_users[role])
        try:
            for method in ("orders.cancel_order", "orders.create_order", "orders.get_order", "orders.list_orders",
                           "orders.replay_dead_letters", "orders.sync_catalogue"):
                with pytest.raises(amqp.exceptions.AccessRefused):
                    connection.channel().basic_publish(
                        amqp.Message(json.dumps({"args": [order["id"]], "kwargs": {}})),
                        exchange="nameko-rpc", routing_key=method)
        finally:
            connection.close()
    assert operator.orders.get_order(order["id"])["status"] in ("pending", "confirmed")
    assert operator.orders.cancel_order(order["id"])["status"] == "cancelled"


def test_a_service_user_cannot_forge_events_call_admin_methods_or_consume_others_queues(
        services, broker_users):
    connection = raw_channel(broker_users["orders"])
    try:
        refused = []

        def attempt(action):
            channel = connection.channel()
            with pytest.raises(amqp.exceptions.AccessRefused) as caught:
                action(channel)
            refused.append(str(caught.value))

        # a forged product_changed, on inventory's exchange and on its own
        attempt(lambda channel: channel.basic_publish(
            amqp.Message('{"sku": "P-1", "price": 1}'), exchange="inventory.events", routing_key="product_changed"))
        attempt(lambda channel: channel.basic_publish(
            amqp.Message("{}"), exchange="orders.events", routing_key="product_changed"))
        # RPC methods only the operator may call
        for method in ("inventory.restock", "inventory.create_product", "notifications.set_preferences",
                       "inventory.replay_dead_letters"):
            attempt(lambda channel, key=method: channel.basic_publish(
                amqp.Message("{}"), exchange="nameko-rpc", routing_key=key))
        # straight into inventory's event queue, past the topic permissions: by the default
        # exchange (routing by queue name), by inventory's redelivery exchange (its retries and
        # dead letters), by binding inventory's queue to orders' own redelivery exchange
        forged = amqp.Message(json.dumps(FORGED_ORDER), content_type="application/json")
        attempt(lambda channel: channel.basic_publish(forged, exchange="", routing_key=INVENTORY_QUEUE))
        attempt(lambda channel: channel.basic_publish(forged, exchange="amq.default", routing_key=INVENTORY_QUEUE))
        attempt(lambda channel: channel.basic_publish(forged, exchange="inventory.redelivery",
                                                      routing_key=INVENTORY_QUEUE))
        attempt(lambda channel: channel.queue_bind(INVENTORY_QUEUE, "orders.redelivery", INVENTORY_QUEUE))
        attempt(lambda channel: channel.exchange_declare("inventory.redelivery", "direct", durable=True))
        # ... or by a queue of its own that dead-letters into inventory's queue
        own = "rpc.reply-orders-{}".format(uuid.uuid4())  # a name orders may declare
        for exchange in ("", "inventory.redelivery"):
            attempt(lambda channel, exchange=exchange: channel.queue_declare(own, auto_delete=True, arguments={
                "x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": INVENTORY_QUEUE}))
        # a queue that dead-letters through orders' own redelivery exchange may be declared, but
        # that exchange reaches orders' queues only: what it dead-letters goes nowhere
        channel = connection.channel()
        channel.queue_declare(own, auto_delete=True, arguments={
            "x-dead-letter-exchange": "orders.redelivery", "x-dead-letter-routing-key": INVENTORY_QUEUE})
        channel.queue_bind(own, "orders.redelivery", own)
        channel.basic_publish(amqp.Message(json.dumps(FORGED_ORDER), expiration="0"), exchange="orders.redelivery",
                              routing_key=own)
        channel.basic_publish(forged, exchange="orders.redelivery", routing_key=INVENTORY_QUEUE)
        # another service's queues
        attempt(lambda channel: channel.basic_consume("evt-orders-order_created--inventory.reserve_stock"))
        attempt(lambda channel: channel.basic_consume("rpc-inventory"))
        attempt(lambda channel: channel.basic_get("inventory.dead-letters"))
        assert all("ACCESS_REFUSED" in message for message in refused)
        # while its own events go through
        channel = connection.channel()
        channel.basic_publish(amqp.Message("{}"), exchange="orders.events", routing_key="order_cancelled")
    finally:
        connection.close()
    # the inventory queue saw none of it, and inventory is still consuming
    management = broker_grants.Management(MANAGEMENT, "guest", "guest")
    vhost = urllib.parse.quote(urllib.parse.urlsplit(broker_users["orders"]["AMQP_URI"]).path[1:], safe="")
    path = "/api/queues/{}/{}".format(vhost, urllib.parse.quote("evt-orders-order_created--inventory.reserve_stock",
                                                                  safe=""))
    # the management API's figures lag a few seconds behind
    eventually(lambda: management.request("GET", path).get("consumers", 0) >= 1, timeout=15,
               message="inventory consuming")
    assert management.request("GET", path).get("messages", 0) == 0
    time.sleep(1)  # anything that did get through would have been handled by now
    with ClusterRpcProxy(broker_users[broker_grants.OPERATOR], timeout=10) as operator:
        assert operator.inventory.get_reservation(FORGED_ORDER["data"]["order_id"]) is None
        # (the order_cancelled "{}" orders may publish is parked by release_stock; nothing of reserve_stock's)
        assert INVENTORY_QUEUE not in {letter["original_queue"] for letter in operator.inventory.list_dead_letters()}


def test_retries_and_dead_letters_work_under_the_service_s_own_user(services, operator, broker_users, monkeypatch):
    """Through inventory's redelivery exchange: a failed attempt is retried, a malformed event parked and replayed."""
    operator.inventory.create_product("P-1", "Pen", 150, 5)
    real, failures = inventory_handlers.reserve_stock, []

    def fails_once(uow, order_id, lines):
        if not failures:
            failures.append(order_id)
            raise RuntimeError("a passing failure")
        return real(uow, order_id, lines)
    monkeypatch.setattr(inventory_handlers, "reserve_stock", fails_once)
    connection = raw_channel(broker_users[broker_grants.OPERATOR])
    try:
        channel = connection.channel()
        channel.basic_publish(amqp.Message(json.dumps(FORGED_ORDER), content_type="application/json"),
                              exchange="orders.events", routing_key="order_created")
        order_id = FORGED_ORDER["data"]["order_id"]
        reservation = eventually(lambda: operator.inventory.get_reservation(order_id), message="retried")
        assert failures == [order_id] and reservation["status"] == "reserved"
        # a malformed event is dead-lettered, and the operator's replay sends it back (inventory's user publishes)
        channel.basic_publish(amqp.Message('{"id": "bad-1", "type": "order_created"}',
                                           content_type="application/json"),
                              exchange="orders.events", routing_key="order_created")
        letters = eventually(lambda: operator.inventory.list_dead_letters(), message="dead-lettered")
        assert [letter["original_queue"] for letter in letters] == [INVENTORY_QUEUE]
        assert operator.inventory.replay_dead_letters() == 1
        eventually(lambda: operator.inventory.list_dead_letters(), message="dead-lettered again after replay")
    finally:
        connection.close()


def test_the_operator_may_replay_dead_letters_and_change_preferences(services, operator):
    assert operator.inventory.replay_dead_letters() == 0
    operator.notifications.set_preferences("ann@example.com", ["email"])
    assert operator.notifications.get_preferences("ann@example.com")["channels"] == ["email"]


def test_a_password_hash_from_the_grants_module_logs_in(broker_users):
    """The definitions file's hashes (hash-password) are what RabbitMQ checks."""
    management = broker_grants.Management(MANAGEMENT, "guest", "guest")
    name = urllib.parse.unquote(urllib.parse.urlsplit(broker_users["operator"]["AMQP_URI"]).username)
    management.put("/api/users/{}".format(urllib.parse.quote(name, safe="")), {
        "password_hash": broker_grants.rabbit_password_hash("hashed-secret"),
        "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})
    parts = urllib.parse.urlsplit(broker_users["operator"]["AMQP_URI"])
    config = {"AMQP_URI": broker_grants.amqp_uri_for(broker_users["operator"]["AMQP_URI"], name, "hashed-secret")}
    connection = raw_channel(config)
    connection.close()
    assert parts.username
