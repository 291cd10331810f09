"""Each service on the real broker as its own user (services/common/broker_grants.py).

The users are created on the test's vhost through the management API, with
the grants production gets (catalogue writes not granted to orders); the
services run in-process, each container with its own AMQP_URI.
"""
import secrets
import urllib.parse

import amqp
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from services.common import broker_grants
from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders.service import OrdersService
from tests.support import eventually, tokens

SERVICES = {"orders": OrdersService, "inventory": InventoryService, "notifications": NotificationsService}
MANAGEMENT = "http://127.0.0.1:15672"


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


def test_orders_calling_restock_or_create_product_is_refused_by_the_broker_and_nothing_changes(
        services, operator, broker_users):
    config = broker_users["orders"]
    operator.inventory.create_product("P-1", "Pen", 150, 5)
    admin = tokens.admin()
    restock = requests.post(url(config, "/products/P-1/restock"), json={"quantity": 100}, headers=admin, timeout=10)
    assert restock.status_code == 403, restock.text
    assert restock.json()["error"] == "forbidden"
    assert restock.json()["details"] == {"service": "inventory", "method": "restock"}
    create = requests.post(url(config, "/products"), headers=admin, timeout=10,
                           json={"sku": "P-2", "name": "Pad", "price": 10, "stock": 1})
    assert create.status_code == 403, create.text
    assert operator.inventory.get_stock("P-1")["on_hand"] == 5
    assert [product["sku"] for product in operator.inventory.list_products()] == ["P-1"]
    # orders keeps working: its allowed calls still go through, the saga still runs
    assert requests.get(url(config, "/products/P-1"), timeout=10).status_code == 200
    placed = requests.post(url(config, "/orders"), headers=tokens.customer("ann@example.com"), timeout=10,
                           json={"lines": [{"sku": "P-1", "quantity": 1}]})
    assert placed.status_code == 202, placed.text
    eventually(lambda: operator.orders.get_order(placed.json()["id"])["status"] == "confirmed", message="confirmed")
    # the operator may do what orders may not
    assert operator.inventory.restock("P-1", 3)["on_hand"] == 8


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
