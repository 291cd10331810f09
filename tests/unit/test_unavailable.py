"""A database that is down is a 503 for clients and a reason to wait for
consumers, never a 500 or a dead letter."""
import json

from kombu import Queue
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from services.common.messaging.consumers import (
    ATTEMPT_HEADER, ReliableEventHandler, redelivery_exchange, retry_delays, retry_queue,
)
from services.common.errors import NotFound, ServiceUnavailable, is_unavailable
from services.common.http.front_door import JsonHttpHandler


def operational_error():
    return OperationalError("SELECT 1", {}, Exception("could not connect to server: Connection refused"))


def test_what_counts_as_unavailable():
    assert is_unavailable(operational_error())
    assert is_unavailable(ServiceUnavailable("inventory did not answer"))
    assert is_unavailable(DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True))
    assert not is_unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_unavailable(NotFound("no such order"))
    assert not is_unavailable(ValueError("bug"))
    # a value too big for an index, raised by psycopg2 as OperationalError: the value's fault,
    # so HTTP and RPC callers are not told to try again (one rule for consumers, RPC and HTTP)
    assert not is_unavailable(OperationalError("INSERT", {}, _DriverError("index row size", "54000")))


def test_a_database_error_reaches_the_client_as_json_503_with_retry_after():
    response = JsonHttpHandler("POST", "/orders").response_from_exception(operational_error())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = json.loads(response.get_data(as_text=True))
    assert body["error"] == "service_unavailable"
    assert body["details"] == {"reason": "OperationalError"}
    assert "connect" not in body["message"]  # no driver internals leak out


class FakeMessage:
    def __init__(self, attempt):
        self.headers = {ATTEMPT_HEADER: attempt}
        self.body = b"{}"
        self.content_type = "application/json"
        self.content_encoding = "utf-8"
        self.properties = {"message_id": "m-1"}
        self.delivery_info = {"exchange": "orders.events", "routing_key": "order_created"}


class RecordingPublisher:
    def __init__(self):
        self.sent = []

    def publish(self, body, routing_key, headers, **kwargs):
        self.sent.append((routing_key, headers))


def handler():
    reliable = ReliableEventHandler("orders", "order_created")
    reliable.max_attempts, reliable.backoff_base, reliable.backoff_max = 3, 0.01, 0.02
    reliable.queue = Queue("evt-orders-order_created--inventory.reserve_stock")
    reliable.retry_delays = retry_delays(0.01, 0.02)
    reliable.redelivery = redelivery_exchange("inventory")
    reliable.retry_queues = [retry_queue({}, reliable.queue.name, delay, reliable.redelivery)
                             for delay in reliable.retry_delays]
    reliable.dead_letters = Queue("inventory.dead-letters")
    reliable.publisher = RecordingPublisher()
    return reliable


def test_a_consumer_keeps_retrying_while_the_database_is_down_but_dead_letters_a_bug():
    reliable = handler()
    reliable._retry_or_dead_letter(FakeMessage(attempt=9), operational_error())
    (queue, headers), = reliable.publisher.sent
    # the longest fixed delay, and the count stays within the bound
    assert queue == "evt-orders-order_created--inventory.reserve_stock.backoff-20ms"
    assert headers[ATTEMPT_HEADER] == 3

    reliable = handler()
    reliable._retry_or_dead_letter(FakeMessage(attempt=3), ValueError("bug"))
    (queue, headers), = reliable.publisher.sent
    assert queue == "inventory.dead-letters"
    assert headers["x-error-type"] == "ValueError"


class _DriverError(Exception):
    def __init__(self, message, pgcode=None):
        super().__init__(message)
        self.pgcode = pgcode


def test_an_outage_waits_but_a_value_the_database_refuses_is_dead_lettered_after_the_bound():
    from sqlalchemy.exc import DataError

    outages = [operational_error(),
               OperationalError("SELECT 1", {}, _DriverError("server closed the connection", "08006")),
               OperationalError("SELECT 1", {}, _DriverError("terminating connection", "57P01"))]
    data_errors = [DataError("INSERT", {}, _DriverError("integer out of range", "22003")),
                   IntegrityError("INSERT", {}, _DriverError("violates check constraint", "23514")),
                   # psycopg2 raises a program limit (a value too big for an index) as OperationalError
                   OperationalError("INSERT", {}, _DriverError("index row size exceeds maximum", "54000")),
                   ValueError("A string literal cannot contain NUL (0x00) characters.")]
    for exc in outages:
        reliable = handler()
        reliable._retry_or_dead_letter(FakeMessage(attempt=3), exc)
        (queue, headers), = reliable.publisher.sent
        assert queue.startswith("evt-orders-order_created--inventory.reserve_stock.backoff-"), exc
    for exc in data_errors:
        reliable = handler()
        reliable._retry_or_dead_letter(FakeMessage(attempt=3), exc)
        (queue, headers), = reliable.publisher.sent
        assert queue == "inventory.dead-letters", exc
        assert "INSERT" not in headers["x-error-message"], headers["x-error-message"]


def test_retry_delays_are_a_few_fixed_steps_from_base_to_cap():
    assert retry_delays(0.5, 30) == [0.5, 2.0, 8.0, 30.0]
    assert retry_delays(0.05, 0.2) == [0.05, 0.2]
    assert retry_delays(5, 1) == [1.0]
    queue = retry_queue({}, "q", 2.0, redelivery_exchange("svc"))
    assert queue.name == "q.backoff-2000ms"
    # back into q through the service's own redelivery exchange, never the default exchange
    assert queue.queue_arguments == {"x-message-ttl": 2000, "x-dead-letter-exchange": "svc.redelivery",
                                     "x-dead-letter-routing-key": "q"}
    assert (queue.exchange.name, queue.routing_key) == ("svc.redelivery", "q.backoff-2000ms")
