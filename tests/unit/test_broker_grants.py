"""The broker's users come from one source (services/common/messaging/broker_grants.py):
the production definitions file is what it generates, and its grants match
what the service classes really consume, publish and call."""
import inspect
import json
import os
import re

from nameko.events import EventHandler
from nameko.rpc import Rpc

from services.common.messaging import broker_grants
from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders.service import OrdersService

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = {"orders": OrdersService, "inventory": InventoryService, "notifications": NotificationsService}


def entrypoints(cls, kind):
    for _, member in inspect.getmembers(cls):
        for entrypoint in getattr(member, "nameko_entrypoints", ()):
            if isinstance(entrypoint, kind):
                yield member.__name__, entrypoint


def test_the_definitions_file_is_what_the_grants_module_generates():
    with open(os.path.join(ROOT, "deploy", "rabbitmq", "definitions.json")) as stream:
        on_disk = json.load(stream)
    assert on_disk == broker_grants.definitions("orders-prod"), (
        "regenerate: python -m services.common.messaging.broker_grants definitions --vhost orders-prod "
        "> deploy/rabbitmq/definitions.json")


def test_each_service_may_bind_exactly_the_events_its_handlers_consume():
    for name, cls in CLASSES.items():
        consumed = {}
        for _, handler in entrypoints(cls, EventHandler):
            consumed.setdefault(handler.source_service, set()).add(handler.event_type)
        granted = {source: set(events) for source, events in broker_grants.SERVICES[name].handles.items()}
        assert consumed == granted, name


def test_every_consumed_event_is_published_by_its_source_and_every_call_exists():
    for name, grant in broker_grants.SERVICES.items():
        for source, events in grant.handles.items():
            assert set(events) <= set(broker_grants.SERVICES[source].publishes), (name, source)
        for call in broker_grants.calls(name):
            service, method = call.split(".")
            assert method in {method for method, _ in entrypoints(CLASSES[service], Rpc)}, call


def test_orders_may_call_inventory_reads_but_never_catalogue_writes():
    rpc = next(topic for topic in broker_grants.topic_permissions("orders") if topic["exchange"] == "nameko-rpc")
    write = re.compile(rpc["write"])
    assert write.match("inventory.get_product") and write.match("inventory.ping")
    assert write.match("0b8e4c1e-1111-2222-3333-444455556666")  # a reply
    for forbidden in ("inventory.restock", "inventory.create_product", "inventory.update_product",
                      "notifications.set_preferences", "inventory.replay_dead_letters", "inventory.#", "#"):
        assert not write.match(forbidden), forbidden


def test_no_service_may_write_to_the_default_exchange_only_to_its_own_redelivery_exchange():
    from services.common.messaging.consumers import redelivery_exchange
    for name in broker_grants.SERVICES:
        write = re.compile(broker_grants.permissions(name)["write"])
        assert not write.match("amq.default") and not write.match(""), name
        assert write.match(redelivery_exchange(name).name), name
        for other in set(broker_grants.SERVICES) - {name}:
            assert not write.match(redelivery_exchange(other).name), (name, other)
            configure = re.compile(broker_grants.permissions(name)["configure"])
            assert not configure.match(redelivery_exchange(other).name), (name, other)


def test_queue_patterns_cover_a_service_s_own_queues_only():
    configure = re.compile(broker_grants.permissions("orders")["configure"])
    for own in ("rpc-orders", "rpc.reply-orders-0b8e4c1e-1111-2222-3333-444455556666", "orders.dead-letters",
                "evt-inventory-product_changed--orders.apply_product_change",
                "evt-inventory-product_changed--orders.apply_product_change.backoff-500ms"):
        assert configure.match(own), own
    for other in ("rpc-inventory", "inventory.dead-letters", "evt-orders-order_created--inventory.reserve_stock",
                  "rpc.reply-inventory-0b8e4c1e", "rpc-orders-x"):
        assert not configure.match(other), other


def test_password_hash_is_rabbitmq_sha256_with_salt():
    import base64
    import hashlib

    digest = base64.b64decode(broker_grants.rabbit_password_hash("secret", salt=b"\x01\x02\x03\x04"))
    assert digest == b"\x01\x02\x03\x04" + hashlib.sha256(b"\x01\x02\x03\x04secret").digest()


def test_passwords_come_from_the_environment_or_a_private_file(tmp_path):
    path = str(tmp_path / "var" / "broker-credentials.env")
    first = broker_grants.ensure_passwords(path, environ={"ORDERS_BROKER_PASSWORD": "from-env"})
    assert first["orders"] == "from-env" and len(first["operator"]) >= 24
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert broker_grants.ensure_passwords(path, environ={}) == first  # the same on the next run


def test_provisioning_applies_only_to_a_single_local_broker_reached_as_guest():
    assert broker_grants.local_admin("amqp://guest:guest@localhost:5672/") == ("localhost", "/", "guest")
    assert broker_grants.local_admin("pyamqp://guest:guest@localhost:5672/test_vhost")[1] == "test_vhost"
    assert broker_grants.local_admin("amqp://orders:x@localhost:5672/") is None
    assert broker_grants.local_admin("amqp://guest:guest@rabbit-1:5672/") is None
    assert broker_grants.local_admin("amqp://guest:guest@localhost//;amqp://guest:guest@localhost:5673//") is None
    assert (broker_grants.amqp_uri_for("amqp://guest:guest@localhost:5672/v", "v.orders", "p/w")
            == "amqp://v.orders:p%2Fw@localhost:5672/v")
