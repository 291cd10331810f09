"""Issue 11, kind 3: a message whose bookkeeping fails must not loop.

Every failure path of a consumer ends in a retry after a backoff or in the
dead-letter queue with its reason: forged ``x-delivery-attempt`` headers of
any type, a failing dead-letter publish, a data error the database refuses.
Retries wait in fixed-delay queues, so a short delay is never held behind a
long one. Real broker, real databases, the services in-process.
"""
import time

import pytest
from kombu import Connection

from services.common.messaging import consumers
from services.common.messaging.consumers import ATTEMPT_HEADER
from services.common.messaging.events import new_event
from services.inventory import service as inventory_service
from tests.support import eventually

QUEUE = "evt-orders-order_created--inventory.reserve_stock"

# every type of value a forger (or a broken bridge) can put in the header
FORGED = ["abc", "", "3", -5, 0, 2 ** 62, -2 ** 62, [1, 2], b"\x00\xff", True, 2.5, {"n": 1}, None]


def publish_to_queue(config, body, headers):
    with Connection(config["AMQP_URI"]) as connection:
        connection.Producer().publish(body, exchange="", routing_key=QUEUE, headers=headers,
                                      serializer="json", retry=True)


@pytest.fixture
def handled(monkeypatch):
    """How many times each event id was delivered to one of inventory's handlers: a message
    requeued in a loop comes again and again. (A delivery, not a parse: a message that fails in
    a batch is parsed again when it is handled alone, within the same delivery.)"""
    seen = {}
    real = consumers.BatchingEventHandler.handle_message  # reserve_stock's, called per delivery

    def counting(handler, body, message):
        if handler.queue.name == QUEUE:
            key = body.get("id") if isinstance(body, dict) else repr(body)
            seen[key] = seen.get(key, 0) + 1
        return real(handler, body, message)
    monkeypatch.setattr(consumers.BatchingEventHandler, "handle_message", counting)
    return seen


def test_forged_attempt_headers_end_in_the_dead_letter_queue_without_looping(
        running, rpc, service_config, handled):
    for number, value in enumerate(FORGED):
        # a body that can never be valid: the header is read while settling its failure
        publish_to_queue(service_config, {"id": "forged-{}".format(number), "type": "order_created"},
                         {ATTEMPT_HEADER: value})
    letters = eventually(lambda: len(rpc.inventory.list_dead_letters()) >= len(FORGED)
                         and rpc.inventory.list_dead_letters(), timeout=20, message="every forged message parked")
    assert len(letters) == len(FORGED)
    assert {letter["body"]["id"] for letter in letters} == {"forged-{}".format(n) for n in range(len(FORGED))}
    assert all(letter["original_queue"] == QUEUE for letter in letters)
    assert all(letter["error_type"] == "MalformedMessage" for letter in letters)
    time.sleep(0.5)  # a loop would keep counting meanwhile
    assert all(handled["forged-{}".format(n)] == 1 for n in range(len(FORGED))), handled


def test_a_failing_handler_with_a_forged_attempt_header_is_dead_lettered_within_the_bound(
        running, rpc, service_config, handled, monkeypatch):
    def broken(lines):
        raise RuntimeError("bug in reservation code")
    monkeypatch.setattr(inventory_service.domain, "quantities_by_sku", broken)
    for number, value in enumerate(["abc", -1, 2 ** 62, [3]]):
        event = new_event("orders", "order_created", {"order_id": "o-{}".format(number),
                                                       "lines": [{"sku": "X-1", "quantity": 1}]})
        publish_to_queue(service_config, event, {ATTEMPT_HEADER: value})
    letters = eventually(lambda: len(rpc.inventory.list_dead_letters()) >= 4 and rpc.inventory.list_dead_letters(),
                         timeout=20, message="four dead letters")
    assert {letter["error_type"] for letter in letters} == {"RuntimeError"}
    time.sleep(0.5)
    assert len(handled) == 4 and all(count <= service_config["MAX_DELIVERY_ATTEMPTS"]
                                     for count in handled.values()), handled


def test_when_even_dead_lettering_fails_the_message_is_requeued_after_a_backoff_not_at_once(
        running, rpc, service_config, handled, monkeypatch):
    failing = {"on": True}
    real_publish = consumers.Publisher.publish

    def refusing(self, payload, **kwargs):
        if failing["on"]:
            raise RuntimeError("broker refused the dead letter")
        return real_publish(self, payload, **kwargs)
    monkeypatch.setattr(consumers.Publisher, "publish", refusing)
    publish_to_queue(service_config, {"id": "stuck-1", "type": "order_created"}, {})
    eventually(lambda: handled.get("stuck-1"), message="first attempt")
    time.sleep(2)
    # requeued at once it was handled hundreds of times a second; backed off, a handful
    assert handled["stuck-1"] <= 12, handled
    failing["on"] = False
    letters = eventually(lambda: rpc.inventory.list_dead_letters(), timeout=20, message="dead letter once it works")
    assert [letter["body"]["id"] for letter in letters] == ["stuck-1"]


@pytest.fixture
def long_retries(service_config):
    """Retry steps 0.1 s, 0.4 s, 1.6 s, 6 s, and enough attempts to use them."""
    service_config.update({"MAX_DELIVERY_ATTEMPTS": 10, "RETRY_BACKOFF_BASE": 0.1, "RETRY_BACKOFF_MAX": 6})
    return service_config


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_short_retry_is_not_held_behind_a_long_one(long_retries, running, rpc, service_config, monkeypatch):
    arrivals = {}

    def broken(lines):
        sku = lines[0]["sku"]
        arrivals.setdefault(sku, []).append(time.monotonic())
        raise RuntimeError("still failing")
    monkeypatch.setattr(inventory_service.domain, "quantities_by_sku", broken)
    # the old single retry queue picked a random delay up to the step; make it the step
    monkeypatch.setattr(consumers.random, "uniform", lambda low, high: high)

    slow = new_event("orders", "order_created", {"order_id": "slow", "lines": [{"sku": "SLOW", "quantity": 1}]})
    publish_to_queue(service_config, slow, {ATTEMPT_HEADER: 9})  # fails: waits the longest step
    eventually(lambda: arrivals.get("SLOW"), message="slow message failed once")
    quick = new_event("orders", "order_created", {"order_id": "quick", "lines": [{"sku": "QUICK", "quantity": 1}]})
    publish_to_queue(service_config, quick, {})  # fails: waits the shortest step
    eventually(lambda: len(arrivals.get("QUICK", ())) >= 2, timeout=10, message="quick message retried")
    assert arrivals["QUICK"][1] - arrivals["QUICK"][0] < 3, "the short retry waited behind the long one"
    assert len(arrivals["SLOW"]) == 1, "the long retry came back before its time"


def test_a_value_the_database_refuses_is_dead_lettered_after_the_bounded_attempts_without_sql_text(
        running, rpc, service_config, backend):
    # Refused by the database, not by the event schema: on PostgreSQL an
    # order id longer than its column (DataError) and a NUL character; on
    # SQLite a string it cannot store (a lone surrogate is no UTF-8). (A
    # quantity past 64 bits no longer reaches either: no stock fits it, so
    # the order is rejected before any write binds it.)
    if backend == "postgresql":
        bad = [{"order_id": "x" * 80, "lines": [{"sku": "NOPE", "quantity": 1}]},
               {"order_id": "nul\x00id", "lines": [{"sku": "NOPE", "quantity": 1}]}]
    else:
        bad = [{"order_id": "lone\ud800", "lines": [{"sku": "NOPE", "quantity": 1}]}]
    for data in bad:
        publish_to_queue(service_config, new_event("orders", "order_created", data), {})
    letters = eventually(lambda: len(rpc.inventory.list_dead_letters()) >= len(bad)
                         and rpc.inventory.list_dead_letters(), timeout=20, message="data errors parked")
    assert len(letters) == len(bad)
    for letter in letters:
        assert letter["attempts"] == service_config["MAX_DELIVERY_ATTEMPTS"], letter
        message = letter["error_message"]
        assert not any(sql in message for sql in ("[SQL", "SELECT", "INSERT", "UPDATE", "parameters")), message
    rpc.inventory.create_product("OK-1", "Still works", 100, 1)  # the consumer goes on
    eventually(lambda: rpc.orders.list_catalogue(), message="consumers still consuming")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_forged_nameko_context_headers_do_not_stall_or_kill_the_consumer(running, rpc, service_config, handled):
    forged = [{"nameko.call_id_stack": 5}, {"nameko.call_id_stack": "abc"}, {"nameko.call_id_stack": [None, 7]},
              {"nameko.correlation_id": [1, 2]}, {"nameko.correlation_id": b"\xff"},
              {"nameko.correlation_id": "x" * 5000}]
    for number, headers in enumerate(forged):
        publish_to_queue(service_config, {"id": "ctx-{}".format(number), "type": "order_created"}, headers)
    letters = eventually(lambda: len(rpc.inventory.list_dead_letters()) >= len(forged)
                         and rpc.inventory.list_dead_letters(), timeout=20, message="every forged message parked")
    assert {letter["body"]["id"] for letter in letters} == {"ctx-{}".format(n) for n in range(len(forged))}
    rpc.inventory.create_product("OK-2", "Still works", 100, 1)  # the service lives on
    eventually(lambda: rpc.orders.list_catalogue(), message="consumers still consuming")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_rpc_request_with_a_forged_call_id_stack_does_not_kill_the_service(running, rpc, service_config):
    with Connection(service_config["AMQP_URI"]) as connection:
        for stack in (5, "abc", [1, 2], {"a": 1}):
            connection.Producer().publish({"args": [], "kwargs": {}}, exchange="nameko-rpc",
                                          routing_key="inventory.ping", serializer="json", retry=True,
                                          reply_to="nobody-listens", correlation_id="forged",
                                          headers={"nameko.call_id_stack": stack})
    time.sleep(1)
    assert rpc.inventory.ping() == "pong"
