"""The outbox publishes whole batches with one wait for the broker's confirms,
and says exactly which events were confirmed when something goes wrong."""
import time
from datetime import timedelta
from types import SimpleNamespace

import eventlet
import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import text

from services.common.messaging.events import new_event, utcnow
from services.common.messaging.outbox import CLOSE_TIMEOUT, RETENTION, BatchPublisher, Outbox, PublishFailed
from services.orders.models import OrdersBase, OutboxMessage
from tests.support import eventually, free_port


def bound_queue(amqp_uri, exchange):
    queue = Queue("outbox-test", exchange=exchange, routing_key="#", durable=False, auto_delete=False)
    with Connection(amqp_uri) as connection:
        queue(connection.channel()).declare()
    return queue


def drain(amqp_uri, queue):
    bodies = []
    with Connection(amqp_uri) as connection:
        bound = queue(connection.channel())
        while True:
            message = bound.get(no_ack=True, accept=["json"])
            if message is None:
                return bodies
            bodies.append((message.delivery_info["routing_key"], message.payload, message.headers))


def test_a_batch_is_confirmed_as_a_whole_and_arrives_in_order(rabbit_config):
    exchange = Exchange("bench.events", type="topic", durable=True)
    publisher = BatchPublisher(rabbit_config["AMQP_URI"], exchange)
    queue = bound_queue(rabbit_config["AMQP_URI"], exchange)
    events = [new_event("bench", "thing_happened", {"n": n}) for n in range(120)]
    try:
        confirmed = publisher.publish([("thing_happened", body, {"nameko.correlation_id": "c-1"})
                                       for body in events])
        again = publisher.publish([("thing_happened", events[0], {})])  # same connection, next tags
    finally:
        publisher.close()
    assert confirmed == [body["id"] for body in events]
    assert again == [events[0]["id"]]
    received = drain(rabbit_config["AMQP_URI"], queue)
    assert [payload["data"]["n"] for _, payload, _ in received] == list(range(120)) + [0]
    assert received[0][0] == "thing_happened"
    assert received[0][2]["nameko.correlation_id"] == "c-1"


def test_a_batch_leaves_in_one_socket_write(rabbit_config):
    exchange = Exchange("bench.events", type="topic", durable=True)
    publisher = BatchPublisher(rabbit_config["AMQP_URI"], exchange)
    queue = bound_queue(rabbit_config["AMQP_URI"], exchange)
    events = [new_event("bench", "thing_happened", {"n": n}) for n in range(50)]
    writes = []
    try:
        publisher.publish([("thing_happened", events[0], {})])  # connects
        transport = publisher._connection.connection.transport
        sendall = transport._write
        transport._write = lambda data: (writes.append(len(data)), sendall(data))
        confirmed = publisher.publish([("thing_happened", body, {}) for body in events])
        transport._write = sendall  # closing writes its own frames
    finally:
        publisher.close()
    assert confirmed == [body["id"] for body in events]
    assert len(writes) == 1 and writes[0] > 50 * 100, writes  # 50 messages, each well over 100 bytes
    received = drain(rabbit_config["AMQP_URI"], queue)
    assert [payload["data"]["n"] for _, payload, _ in received] == [0] + list(range(50))


def test_an_unreachable_broker_fails_the_batch_with_nothing_confirmed():
    exchange = Exchange("bench.events", type="topic", durable=True)
    publisher = BatchPublisher("amqp://guest:guest@127.0.0.1:{}/".format(free_port()), exchange,
                               confirm_timeout=2)
    with pytest.raises(PublishFailed) as failed:
        publisher.publish([("thing_happened", new_event("bench", "thing_happened", {}), {})])
    assert failed.value.confirmed == []


@pytest.mark.parametrize("backend", ["sqlite"])  # broker_proxy's service_config: no database used
def test_a_broker_gone_silent_fails_the_batch_in_time_and_its_connection_is_dropped(broker_proxy):
    """A network partition: writes succeed and no answer comes. The batch fails after its confirm
    timeout; AMQP's own close of the connection then waited for the broker's close-ok for ever."""
    proxy, uri = broker_proxy
    exchange = Exchange("bench.events", type="topic", durable=True)
    bound_queue(uri, exchange)
    publisher = BatchPublisher(uri, exchange, confirm_timeout=2)
    assert publisher.publish([("thing_happened", new_event("bench", "thing_happened", {}), {})])
    proxy.freeze()
    started = time.monotonic()
    with eventlet.Timeout(20, AssertionError("the publisher waited for a silent broker")):
        with pytest.raises(PublishFailed, match="Timeout") as failed:
            publisher.publish([("thing_happened", new_event("bench", "thing_happened", {}), {})])
    assert failed.value.confirmed == []
    assert publisher._connection is None, "the silent connection is dropped"
    assert time.monotonic() - started < 2 + CLOSE_TIMEOUT + 2


@pytest.mark.parametrize("backend", ["sqlite"])
def test_closing_a_connection_to_a_silent_broker_does_not_wait_for_its_answer(broker_proxy):
    """What a service's kill does with its outbox's connection (a test's teardown hung on it)."""
    proxy, uri = broker_proxy
    exchange = Exchange("bench.events", type="topic", durable=True)
    bound_queue(uri, exchange)
    publisher = BatchPublisher(uri, exchange)
    assert publisher.publish([("thing_happened", new_event("bench", "thing_happened", {}), {})])
    proxy.freeze()
    started = time.monotonic()
    with eventlet.Timeout(20, AssertionError("close waited for a silent broker")):
        publisher.close()
    assert time.monotonic() - started < CLOSE_TIMEOUT + 2
    assert publisher._connection is None


def test_a_refused_batch_drops_its_channel_and_the_next_batch_goes_out_on_a_new_one(rabbit_config):
    """A queue full with ``reject-publish`` makes the broker nack: the batch fails with what was
    confirmed, and the channel that saw the refusal is not used again."""
    exchange = Exchange("bench.events", type="topic", durable=True)
    full = Queue("outbox-full", exchange=exchange, routing_key="#", durable=False, auto_delete=False,
                 queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        full(connection.channel()).declare()
    publisher = BatchPublisher(rabbit_config["AMQP_URI"], exchange)
    first, second, third = (new_event("bench", "thing_happened", {"n": n}) for n in range(3))
    try:
        with pytest.raises(PublishFailed, match="refused 1") as failed:
            publisher.publish([("thing_happened", body, {}) for body in (first, second)])
        assert failed.value.confirmed == [first["id"]]
        assert publisher._connection is None, "the refusing channel is dropped"
        drain(rabbit_config["AMQP_URI"], full)
        assert publisher.publish([("thing_happened", third, {})]) == [third["id"]]
    finally:
        publisher.close()


@pytest.fixture
def orders_outbox(rabbit_config, make_database):
    """The orders service's outbox provider on its own, outside a container."""
    outbox = Outbox(OrdersBase, OutboxMessage)
    outbox.container = SimpleNamespace(service_name="orders", config={
        "AMQP_URI": rabbit_config["AMQP_URI"], "DB_URIS": {"orders:OrdersBase": make_database("orders")}})
    outbox.setup()
    yield outbox
    outbox.publisher.close()
    outbox.engine.dispose()


def test_the_relay_leaves_rows_the_publisher_holds_and_sends_the_rest(rabbit_config, orders_outbox):
    outbox = orders_outbox
    queue = bound_queue(rabbit_config["AMQP_URI"], outbox.exchange)
    held, lost = (new_event("orders", "order_created", {"n": n}) for n in (1, 2))
    with outbox.Session.begin() as session:
        for body in (held, lost):
            session.add(OutboxMessage(event_id=body["id"], event_type="order_created", body=body))
    outbox._inflight.add(held["id"])  # committed, queued for the publisher, not sent yet

    assert outbox.relay_once(grace=timedelta(0)) == 1
    assert [payload["id"] for _, payload, _ in drain(rabbit_config["AMQP_URI"], queue)] == [lost["id"]]
    with outbox.engine.connect() as connection:
        unsent = connection.execute(text("SELECT event_id FROM outbox WHERE published_at IS NULL")).scalars()
        assert list(unsent) == [held["id"]]


def test_old_sent_rows_are_forgotten_but_an_unsent_row_is_kept_however_old(orders_outbox):
    outbox = orders_outbox
    long_ago = utcnow() - RETENTION - timedelta(hours=1)
    sent_long_ago, sent_lately, never_sent = (new_event("orders", "order_created", {"n": n}) for n in (1, 2, 3))
    with outbox.Session.begin() as session:
        for body, published_at in ((sent_long_ago, long_ago), (sent_lately, utcnow()), (never_sent, None)):
            session.add(OutboxMessage(event_id=body["id"], event_type="order_created", body=body,
                                      created_at=long_ago, published_at=published_at))
    outbox._forget_old()
    with outbox.engine.connect() as connection:
        kept = set(connection.execute(text("SELECT event_id FROM outbox")).scalars())
    assert kept == {sent_lately["id"], never_sent["id"]}


def test_confirmed_events_are_marked_sent_together_and_stay_in_flight_until_then(rabbit_config, orders_outbox):
    """Five batches a few ms apart are published as they come but marked sent in
    fewer UPDATEs; until marked, the relay leaves them alone (no duplicates)."""
    outbox = orders_outbox
    outbox.container.spawn_managed_thread = lambda fn, **_: eventlet.spawn(fn)
    queue = bound_queue(rabbit_config["AMQP_URI"], outbox.exchange)
    marks = []
    mark_sent = outbox._mark_sent
    outbox._mark_sent = lambda ids: (marks.append(list(ids)), mark_sent(ids))
    outbox.start()
    events = [new_event("orders", "order_created", {"n": n}) for n in range(25)]
    for first in range(0, 25, 5):
        with outbox.Session.begin() as session:
            for body in events[first:first + 5]:
                session.add(OutboxMessage(event_id=body["id"], event_type="order_created", body=body))
                outbox.publish_after_commit(session, ("order_created", body, None))
        eventlet.sleep(0.01)
    assert outbox.relay_once(grace=timedelta(0)) == 0  # all held by the publisher, none lost
    eventually(lambda: sum(len(ids) for ids in marks) == 25, timeout=5, message="all marked sent")
    outbox.stop()
    assert len(marks) < 5, marks
    assert not outbox._inflight
    assert [payload["id"] for _, payload, _ in drain(rabbit_config["AMQP_URI"], queue)] == \
        [body["id"] for body in events]
    with outbox.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar() == 0


def test_only_a_committed_transaction_hands_its_events_to_the_publisher(orders_outbox):
    outbox = orders_outbox
    kept, dropped = (new_event("orders", "order_created", {"n": n}) for n in (1, 2))
    with outbox.Session() as session:
        session.begin()
        outbox.publish_after_commit(session, ("order_created", dropped, None))
        session.rollback()  # the same session goes on to a transaction that commits
        session.begin()
        outbox.publish_after_commit(session, ("order_created", kept, None))
        session.commit()
    assert outbox._pending.qsize() == 1
    assert outbox._pending.get_nowait()[1]["id"] == kept["id"]
    assert outbox._inflight == {kept["id"]}


def unsent_ids(outbox):
    with outbox.engine.connect() as connection:
        return set(connection.execute(text("SELECT event_id FROM outbox WHERE published_at IS NULL")).scalars())


def test_an_event_that_reaches_no_queue_stays_unsent_backs_off_and_goes_out_once_a_queue_appears(
        rabbit_config, orders_outbox):
    outbox = orders_outbox
    outbox.relay_interval, outbox.unroutable_backoff_max = 0.3, 0.6
    lost = new_event("orders", "order_created", {"n": 1})
    with outbox.Session.begin() as session:
        session.add(OutboxMessage(event_id=lost["id"], event_type="order_created", body=lost,
                                  created_at=utcnow() - timedelta(minutes=1)))
    tries = []
    real_publish = outbox.publisher.publish

    def counting(messages):
        tries.append(len(messages))
        return real_publish(messages)
    outbox.publisher.publish = counting

    assert outbox.relay_once(grace=timedelta(0)) == 1  # tried: the broker returned it (no queue)
    assert unsent_ids(outbox) == {lost["id"]}, "a confirm of a message no queue took is not a delivery"
    assert set(outbox.unroutable_types()) == {"order_created"}
    assert [event["unroutable"] is not None for event in outbox.waiting()] == [True]
    for _ in range(5):  # backing off: the relay does not hammer the broker with it
        outbox.relay_once(grace=timedelta(0))
    assert len(tries) == 1

    queue = bound_queue(rabbit_config["AMQP_URI"], outbox.exchange)  # the consumer appears
    eventually(lambda: outbox.relay_once(grace=timedelta(0)) or not unsent_ids(outbox), timeout=10,
               interval=0.1, message="relay tried again after the backoff")
    eventually(lambda: not unsent_ids(outbox), timeout=10, message="marked sent once a queue took it")
    assert [payload["id"] for _, payload, _ in drain(rabbit_config["AMQP_URI"], queue)] == [lost["id"]]
    assert outbox.unroutable_types() == {}
    assert len(tries) <= 4, tries


def test_an_event_with_no_consumer_by_design_counts_as_sent(rabbit_config, orders_outbox):
    outbox = orders_outbox
    outbox.optional = frozenset({"stock_released"})
    audit = new_event("orders", "stock_released", {"n": 1})
    with outbox.Session.begin() as session:
        session.add(OutboxMessage(event_id=audit["id"], event_type="stock_released", body=audit,
                                  created_at=utcnow() - timedelta(minutes=1)))
    assert outbox.relay_once(grace=timedelta(0)) == 1
    assert unsent_ids(outbox) == set()
    assert outbox.unroutable_types() == {}
