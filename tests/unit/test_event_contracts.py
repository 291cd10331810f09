"""Consumer-driven contracts: what every producer dumps, every consumer reads.

The producers run for real (under ``worker_factory``, a real SQLite file,
the outbox recorded), through every path that publishes: a product created
and changed, an order reserved, rejected, confirmed, cancelled and released.
Each recorded event is then loaded with the read schema of every handler
that consumes it, as that handler's entrypoint would (``parse_event``). A
producer that drops or renames a field a consumer needs fails here, before
any message is sent. docs/saga.md is checked against the same declarations.
"""
import inspect
import re
from pathlib import Path

import pytest

from services.common.messaging.events import new_event, parse_event
from services.inventory import events as inventory_events
from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders import domain as order_domain
from services.orders import events as orders_events
from services.orders.service import OrdersService
from tests.support import service_worker
from tests.unit.conftest import RecordingOutbox

SERVICES = (OrdersService, InventoryService, NotificationsService)
DECLARED = {"orders": orders_events.PUBLISHED, "inventory": inventory_events.PUBLISHED}
SAGA = Path(__file__).resolve().parents[2] / "docs" / "saga.md"


def consumers():
    """{(producer, event name): [(service, handler, read schema)]} from the ``@handles`` entrypoints."""
    found = {}
    for service in SERVICES:
        for name, method in inspect.getmembers(service, callable):
            if hasattr(method, "handles"):
                source, event_type, schema, _inbox = method.handles
                found.setdefault((source, event_type), []).append((service.name, name, schema))
    return found


def declared():
    return {(producer, event.name): event for producer, events in DECLARED.items() for event in events}


@pytest.fixture
def dumped(database):
    """{(producer, event name): [data]}: every event the producers published while driven through the saga."""
    inventory_outbox, orders_outbox = RecordingOutbox(), RecordingOutbox()
    inventory = service_worker(InventoryService, db=database("inventory"), outbox=inventory_outbox)
    orders = service_worker(OrdersService, db=database("orders"), outbox=orders_outbox,
                            config={"MAX_LINE_QUANTITY": 10, "MAX_ORDER_LINES": 3})
    orders.correlation_id = "req-1"

    def relay(outbox, source, to):
        """Hand what ``outbox`` recorded since the last call to the consumers in ``to``."""
        for event_type, data in outbox.events[relay.seen[id(outbox)]:]:
            for handler in to.get(event_type, ()):
                handler(new_event(source, event_type, data))
        relay.seen[id(outbox)] = len(outbox.events)
    relay.seen = {id(inventory_outbox): 0, id(orders_outbox): 0}
    to_orders = {"product_changed": [orders.update_catalogue], "stock_reserved": [orders.confirm_order],
                 "stock_rejected": [orders.reject_order]}
    to_inventory = {"order_created": [inventory.reserve_stock], "order_cancelled": [inventory.release_stock]}

    inventory.create_product("A", "Apple", 100, 3)
    inventory.update_product("A", price=120)
    relay(inventory_outbox, "inventory", to_orders)
    kept = orders.create_order("ann@example.com", [{"sku": "A", "quantity": 2}])
    refused = orders.create_order("bob@example.com", [{"sku": "A", "quantity": 5}])
    relay(orders_outbox, "orders", to_inventory)
    relay(inventory_outbox, "inventory", to_orders)
    assert orders.get_order(kept["id"])["status"] == "confirmed"
    assert orders.get_order(refused["id"])["status"] == "rejected"
    orders.cancel_order(kept["id"])
    relay(orders_outbox, "orders", to_inventory)
    assert inventory.get_stock("A")["reserved"] == 0

    recorded = {}
    for producer, outbox in (("inventory", inventory_outbox), ("orders", orders_outbox)):
        for event_type, data in outbox.events:
            recorded.setdefault((producer, event_type), []).append(data)
    return recorded


def test_every_published_event_is_declared_and_every_declared_one_was_exercised(dumped):
    assert set(dumped) == set(declared())


def test_every_consumed_event_is_declared_by_its_producer():
    assert set(consumers()) <= set(declared())


def test_what_each_producer_dumps_every_consumer_reads(dumped):
    checked = 0
    for key, handlers in sorted(consumers().items()):
        assert dumped.get(key), "{} {} is consumed but was never published".format(*key)
        for data in dumped[key]:
            for service, handler, schema in handlers:
                event = parse_event(new_event(key[0], key[1], data), schema)  # MalformedMessage on a break
                assert event.data, (service, handler)
                checked += 1
    assert checked >= 10


# the saga table ---------------------------------------------------------------------


def table_rows(heading):
    """The rows (lists of cells) of the first table under ``heading`` in docs/saga.md."""
    text = SAGA.read_text()
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # less the header


def test_the_saga_table_names_every_event_and_consumer_and_nothing_else():
    documented = {(producer, event, consumer) for producer, event, consumer, _effect in table_rows("## Events")}
    expected = set()
    handlers = consumers()
    for producer, name in declared():
        readers = handlers.get((producer, name), [])
        expected |= {(producer, name, "{}.{}".format(service, handler)) for service, handler, _ in readers}
        if not readers:
            assert declared()[(producer, name)].optional, "{} has no consumer and is not optional".format(name)
            expected.add((producer, name, "none"))
    assert documented == expected


def test_the_saga_table_shows_the_order_state_machine_as_the_domain_has_it():
    documented = {(start, end, event) for start, end, event in table_rows("## The order's states")}
    expected = {(start, end, order_domain.ANNOUNCES[end].name)
                for start, ends in order_domain.ALLOWED.items() for end in ends}
    assert documented == expected
