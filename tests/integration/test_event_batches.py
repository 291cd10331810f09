"""Events that arrive together are applied in one transaction, and lose none of their guarantees.

Each test lets a burst of ``order_created`` events wait in inventory's queue
while it is stopped, then starts it: the broker hands over up to the
prefetch count at once, and they reach the handler as batches. On SQLite and
on PostgreSQL.
"""
import json
import zlib

import pytest
from kombu import Connection, Exchange
from sqlalchemy import text

from services.common.db.database import make_engine
from services.common.messaging import consumers
from services.common.messaging.consumers import BatchingEventHandler
from services.common.messaging.events import new_event
from services.common.observability.metrics import Metrics
from services.inventory.service import InventoryService
from tests.support import eventually

BURST = 12
SKUS = ("B-1", "B-2", "B-3")


def order(n):
    """Orders over overlapping skus, in varying order: batches that lock them unordered would deadlock."""
    skus = [SKUS[n % 3], SKUS[(n + 2) % 3]] if n % 2 else [SKUS[(n + 1) % 3]]
    return {"order_id": "batch-{}".format(n), "lines": [{"sku": sku, "quantity": 1} for sku in skus]}


@pytest.fixture
def batches(monkeypatch):
    """The size of every batch a worker finished; ``batches.failed``: the errors of those that failed."""
    sizes = Batches()
    finish = BatchingEventHandler._batch_result

    def counting(handler, batch, worker_ctx, result=None, exc_info=None):
        sizes.append(len(batch))
        if exc_info is not None:
            sizes.failed.append(repr(exc_info[1]))
        return finish(handler, batch, worker_ctx, result, exc_info)
    monkeypatch.setattr(BatchingEventHandler, "_batch_result", counting)
    return sizes


@pytest.fixture
def stopped_inventory(container_factory, service_config, rpc):
    """Inventory with its products made and its queues declared, stopped; returns a starter."""
    first = container_factory(InventoryService, service_config)
    first.start()
    for sku in SKUS:
        rpc.inventory.create_product(sku, "Batch " + sku, 100, 1000)
    first.stop()

    def start():  # may be called again: a new container each time
        container = container_factory(InventoryService, service_config)
        container.start()
        return container
    return start


class Batches(list):
    def __init__(self):
        super().__init__()
        self.failed = []


def trace_id(order_id):
    """The trace an order's event belongs to: 32 hex digits of its own."""
    return "{:032x}".format(zlib.crc32(order_id.encode()) + 1)


def publish(config, bodies):
    """Each event with a correlation id of its own, ``corr-<order id>``, and a trace of its own."""
    exchange = Exchange("orders.events", type="topic", durable=True)
    with Connection(config["AMQP_URI"]) as connection:
        producer = connection.Producer()
        for body in bodies:
            order_id = body["data"]["order_id"]
            producer.publish(body, exchange=exchange, routing_key="order_created", serializer="json",
                             headers={"nameko.correlation_id": "corr-" + order_id,
                                      "nameko.traceparent": "00-{}-{}-00".format(trace_id(order_id), "1" * 16)})


def rows(config, query):
    engine = make_engine(config["DB_URIS"]["inventory:InventoryBase"])
    try:
        with engine.connect() as connection:
            return connection.execute(text(query)).all()
    finally:
        engine.dispose()


def reserved_stock(config):
    return dict(rows(config, "SELECT sku, reserved FROM products"))


def expected_reserved(orders):
    expected = {sku: 0 for sku in SKUS}
    for data in orders:
        for line in data["lines"]:
            expected[line["sku"]] += line["quantity"]
    return expected


def counting_reservations(monkeypatch):
    """The order ids inventory's reserve_stock use case was applied to, in order (its inbox let through)."""
    from services.inventory import handlers

    applied = []
    reserve_stock = handlers.reserve_stock
    monkeypatch.setattr(handlers, "reserve_stock",
                        lambda uow, order_id, lines: applied.append(order_id) or reserve_stock(uow, order_id, lines))
    return applied


def decided(config):
    return {order_id for (order_id,) in rows(config, "SELECT order_id FROM reservations")}


def test_a_burst_is_applied_in_batches_each_event_once_under_its_own_correlation_id(
        stopped_inventory, service_config, batches, monkeypatch):
    orders = [order(n) for n in range(BURST)]
    applied = counting_reservations(monkeypatch)
    publish(service_config, [new_event("orders", "order_created", data) for data in orders])
    container = stopped_inventory()

    eventually(lambda: len(decided(service_config)) == BURST, timeout=20, message="every order decided")
    assert batches and max(batches) > 1, "a burst should be handled in batches: {}".format(batches)
    # the metrics count each event of a batch, and the batch as one call
    [metrics] = [dependency for dependency in container.dependencies if isinstance(dependency, Metrics)]
    labels = {"service": "inventory", "entrypoint": "reserve_stock", "kind": "event", "outcome": "success"}
    eventually(lambda: metrics.registry.get_sample_value("nameko_entrypoint_messages_total", labels) == BURST,
               timeout=5, message="every message counted")
    assert metrics.registry.get_sample_value("nameko_entrypoint_calls_total", labels) < BURST
    assert batches.failed == [], "batches over shared products must not deadlock"
    assert sorted(applied) == sorted(data["order_id"] for data in orders), "each event applied once"
    assert reserved_stock(service_config) == expected_reserved(orders)
    published = rows(service_config, "SELECT event_type, body, correlation_id, traceparent FROM outbox "
                                     "WHERE event_type = 'stock_reserved'")
    assert len(published) == BURST, "one stock_reserved per order"
    for _, body, correlation_id, traceparent in published:
        body = body if isinstance(body, dict) else json.loads(body)
        order_id = body["data"]["order_id"]
        assert correlation_id == "corr-" + order_id, (correlation_id, body["data"])
        # the event it causes goes on in the trace its cause came with, not in the batch's first
        assert traceparent.split("-")[1] == trace_id(order_id), (traceparent, order_id)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("linger", [0.5, 0])
def test_a_batch_lingers_for_events_that_come_soon_after_its_first(stopped_inventory, service_config, batches,
                                                                   linger):
    """Events 50 ms apart, each alone in its read: with a linger longer than their spread they are
    still one batch (one transaction); without one, each goes on its own."""
    import eventlet

    service_config["EVENT_BATCH_LINGER"] = linger
    stopped_inventory()
    orders = [order(n) for n in range(4)]
    for data in orders:
        publish(service_config, [new_event("orders", "order_created", data)])
        eventlet.sleep(0.05)
    eventually(lambda: len(decided(service_config)) == len(orders), timeout=20, message="every order decided")
    if linger:
        assert list(batches) == [4], batches
    else:
        assert max(batches, default=1) < 4, batches
    assert reserved_stock(service_config) == expected_reserved(orders)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_full_batch_does_not_linger(stopped_inventory, service_config, batches, monkeypatch):
    """A batch as large as a batch may be is handed over at once, not after the linger (here far
    longer than the test waits): under a backlog every batch arrives full."""
    monkeypatch.setattr(consumers, "MAX_BATCH", 4)
    service_config["EVENT_BATCH_LINGER"] = 60
    orders = [order(n) for n in range(4)]
    publish(service_config, [new_event("orders", "order_created", data) for data in orders])
    stopped_inventory()
    eventually(lambda: len(decided(service_config)) == len(orders), timeout=15, message="every order decided")
    assert list(batches) == [4], batches


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_batching_consumer_prefetches_two_batches_whatever_max_workers_is(
        stopped_inventory, service_config, rabbit_manager, rabbit_config):
    """With nameko's prefetch (max_workers) a backlog came one small batch at a time, the next only
    after the last was acked; a consumer that hands each message to a worker keeps max_workers."""
    service_config["max_workers"] = 4
    stopped_inventory()

    def prefetch(queue):
        details = rabbit_manager.get_queue(rabbit_config["vhost"], queue).get("consumer_details") or []
        return [consumer["prefetch_count"] for consumer in details]
    batched, alone = ("evt-orders-{}--inventory.{}".format(*names)
                      for names in (("order_created", "reserve_stock"), ("order_cancelled", "release_stock")))
    # the management API's figures lag a few seconds behind
    eventually(lambda: prefetch(batched) and prefetch(alone) and prefetch("rpc-inventory"), timeout=20,
               message="inventory consuming")
    assert prefetch(batched) == [2 * consumers.MAX_BATCH]
    assert prefetch(alone) == prefetch("rpc-inventory") == [4]


def test_one_bad_event_in_a_batch_is_dead_lettered_and_the_others_are_applied(
        stopped_inventory, service_config, rpc, batches):
    orders = [order(n) for n in range(BURST)]
    bodies = [new_event("orders", "order_created", data) for data in orders]
    bad = new_event("orders", "order_created", {"order_id": "batch-bad", "lines": "not a list"})
    publish(service_config, bodies[:5] + [bad] + bodies[5:])
    stopped_inventory()

    eventually(lambda: len(decided(service_config)) == BURST, timeout=20, message="every good order decided")
    letters = eventually(lambda: rpc.inventory.list_dead_letters(), timeout=20, message="the bad one parked")
    assert [letter["body"]["id"] for letter in letters] == [bad["id"]], letters
    assert letters[0]["attempts"] == 1, "the failed batch cost the bad message no attempt of its own"
    assert batches and max(batches) > 1, batches
    assert reserved_stock(service_config) == expected_reserved(orders), "no good order lost or applied twice"
    assert "batch-bad" not in decided(service_config)


def test_a_batch_committed_but_never_acked_changes_nothing_when_it_comes_again(
        stopped_inventory, service_config, batches, monkeypatch):
    """A process that dies between a batch's commit and its acks: the broker delivers it again."""
    orders = [order(n) for n in range(BURST)]
    applied = counting_reservations(monkeypatch)
    publish(service_config, [new_event("orders", "order_created", data) for data in orders])
    never_acked = []
    with monkeypatch.context() as dying:
        dying.setattr(BatchingEventHandler, "_ack_all", lambda handler, batch: never_acked.extend(batch))
        container = stopped_inventory()
        # unacked, they fill the prefetch window: the rest waits for the next process
        eventually(lambda: never_acked and len(decided(service_config)) >= len(never_acked), timeout=20,
                   message="a batch committed")
        container.kill()  # its unacked messages go back to the queue

    redelivered = []
    handle = BatchingEventHandler.handle_message

    def noting(handler, body, message):
        if message.delivery_info.get("redelivered"):
            redelivered.append(body["id"])
        return handle(handler, body, message)
    monkeypatch.setattr(BatchingEventHandler, "handle_message", noting)
    container = stopped_inventory()
    expected_again = {body["id"] for body, _ in never_acked}
    eventually(lambda: expected_again <= set(redelivered), timeout=20,
               message="the batches never acked delivered again")
    eventually(lambda: len(decided(service_config)) == BURST, timeout=20, message="every order decided")
    container.stop()

    assert sorted(applied) == sorted(data["order_id"] for data in orders), "each event applied once"
    assert reserved_stock(service_config) == expected_reserved(orders), "nothing reserved twice"
    published = rows(service_config, "SELECT event_id FROM outbox WHERE event_type = 'stock_reserved'")
    assert len(published) == BURST, "one stock_reserved per order"


def test_two_batches_over_the_same_products_in_crossed_order_do_not_deadlock(stopped_inventory, service_config,
                                                                             backend):
    """Batch one takes B-1 then B-3, batch two B-3 then B-1: locked in sku order first, neither waits
    on the other for ever (on PostgreSQL; on SQLite a writing transaction holds the whole file)."""
    import eventlet
    from nameko.extensions import Entrypoint
    from nameko.testing.utils import get_extension

    container = stopped_inventory()
    entrypoint = get_extension(container, Entrypoint, method_name="reserve_stock")

    def batch(*orders):
        return [(new_event("orders", "order_created", {"order_id": order_id, "lines": [{"sku": sku, "quantity": 1}]}),
                 {"correlation_id": "corr-" + order_id}) for order_id, sku in orders]

    def run(orders):
        # each worker's own result (nameko's entrypoint_hook returns when any worker of the
        # entrypoint is done: the first batch's end would end both waits)
        done = eventlet.event.Event()

        def finished(worker_ctx, result=None, exc_info=None):
            done.send(exc_info)
            return result, exc_info
        container.spawn_worker(entrypoint, (), {"batch": batch(*orders)}, handle_result=finished)
        exc_info = done.wait()
        if exc_info is not None:
            raise exc_info[1]

    first = eventlet.spawn(run, [("x-1", "B-1"), ("x-2", "B-3")])
    second = eventlet.spawn(run, [("y-1", "B-3"), ("y-2", "B-1")])
    with eventlet.Timeout(30):
        first.wait()  # raises what the worker raised: a deadlock would fail one of them
        second.wait()
    assert decided(service_config) == {"x-1", "x-2", "y-1", "y-2"}
    assert reserved_stock(service_config) == {"B-1": 2, "B-2": 0, "B-3": 2}


def test_a_batch_applies_an_event_delivered_twice_in_it_or_handled_before_it_once(stopped_inventory, service_config,
                                                                                 monkeypatch):
    """The batch's inbox statement: one row per new event id, and only those events applied."""
    from nameko.testing.services import entrypoint_hook

    applied = counting_reservations(monkeypatch)
    container = stopped_inventory()
    before, twice, fresh = (new_event("orders", "order_created", order(n)) for n in (0, 1, 2))
    with entrypoint_hook(container, "reserve_stock") as reserve:
        reserve(before)  # alone: handled before the batch comes
        reserve(batch=[(twice, {}), (before, {}), (twice, {}), (fresh, {})])
    assert applied == ["batch-0", "batch-1", "batch-2"], "each event applied once"
    assert decided(service_config) == {"batch-0", "batch-1", "batch-2"}
    assert reserved_stock(service_config) == expected_reserved([order(0), order(1), order(2)])
    inbox = rows(service_config, "SELECT event_id FROM processed_events WHERE consumer = 'reserve_stock'")
    assert sorted(event_id for (event_id,) in inbox) == sorted([before["id"], twice["id"], fresh["id"]])


def test_a_batch_of_reservations_decides_from_one_read_of_its_stock(stopped_inventory, service_config, statements):
    """Orders racing for the last units (1,000 of B-1) in one batch: decided one after another from the numbers read
    (and locked) once for the batch, so the second is refused what the first took, and the batch commits."""
    from nameko.testing.services import entrypoint_hook

    container = stopped_inventory()
    orders = [("r-1", [("B-1", 600)]), ("r-2", [("B-2", 1), ("B-1", 600)]), ("r-3", [("B-1", 400), ("B-3", 5)])]
    events = [(new_event("orders", "order_created", {"order_id": order_id, "lines": [
        {"sku": sku, "quantity": quantity} for sku, quantity in lines]}), {}) for order_id, lines in orders]
    del statements[:]
    with entrypoint_hook(container, "reserve_stock") as reserve:
        reserve(batch=events)
    reads = [sql for sql in statements if sql.startswith("SELECT") and ("FROM products" in sql
                                                                       or "FROM reservations" in sql)]
    assert len(reads) == 2, "one read of the batch's stock and one of its decisions: {}".format(reads)
    assert dict(rows(service_config, "SELECT order_id, status FROM reservations")) == {
        "r-1": "reserved", "r-2": "rejected", "r-3": "reserved"}
    assert reserved_stock(service_config) == {"B-1": 1000, "B-2": 0, "B-3": 5}
    (reasons,) = rows(service_config, "SELECT reasons FROM reservations WHERE order_id = 'r-2'")[0]
    reasons = json.loads(reasons) if isinstance(reasons, str) else reasons
    assert reasons == [{"sku": "B-1", "reason": "insufficient_stock", "requested": 600, "available": 400}]


def test_a_quantity_no_stock_could_hold_is_rejected_not_written(stopped_inventory, service_config):
    """Past 64 bits, too: it is decided in Python, and only quantities that fit are ever bound."""
    from nameko.testing.services import entrypoint_hook

    container = stopped_inventory()
    with entrypoint_hook(container, "reserve_stock") as reserve:
        reserve(new_event("orders", "order_created", {"order_id": "huge", "lines": [
            {"sku": "B-1", "quantity": 2 ** 70}, {"sku": "B-2", "quantity": 1}]}))
    assert dict(rows(service_config, "SELECT order_id, status FROM reservations")) == {"huge": "rejected"}
    assert reserved_stock(service_config) == {"B-1": 0, "B-2": 0, "B-3": 0}


def test_orders_confirms_a_batch_with_one_locking_read_and_skips_an_order_that_moved_on(
        container_factory, service_config, rpc, monkeypatch):
    """Orders alone: its batch of stock_reserved reads the batch's orders in one statement
    (``lock_orders``); each is confirmed once, and one cancelled meanwhile stays cancelled."""
    from nameko.testing.services import entrypoint_hook

    from services.orders import store
    from services.orders.service import OrdersService

    container = container_factory(OrdersService, service_config)
    container.start()
    with entrypoint_hook(container, "update_catalogue") as update:
        update(new_event("inventory", "product_changed",
                         {"sku": "C-1", "name": "Cup", "price": 100, "active": True, "version": 1}))
    placed = [rpc.orders.create_order("batch{}@example.com".format(n), [{"sku": "C-1", "quantity": 1}])["id"]
              for n in range(4)]
    rpc.orders.cancel_order(placed[2], "changed my mind")

    batch_reads = []
    lock_orders = store.lock_orders

    def counting(session, order_ids):
        batch_reads.append(sorted(order_ids))
        return lock_orders(session, order_ids)
    monkeypatch.setattr(store, "lock_orders", counting)
    with entrypoint_hook(container, "confirm_order") as confirm:
        confirm(batch=[(new_event("inventory", "stock_reserved", {"order_id": order_id}), {})
                       for order_id in reversed(placed)])
    assert batch_reads == [sorted(placed)], "one read for the batch's orders"
    statuses = [rpc.orders.get_order(order_id)["status"] for order_id in placed]
    assert statuses == ["confirmed", "confirmed", "cancelled", "confirmed"]
