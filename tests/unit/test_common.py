import eventlet
import pytest
from marshmallow import Schema, fields

from services.common.messaging.consumers import backoff_seconds
from services.common.db.database import redact
from services.common.messaging.events import MalformedMessage, new_event, parse_event
from tests.support import eventually


class Data(Schema):
    order_id = fields.String(required=True)


def test_events_round_trip_through_the_envelope():
    body = new_event("orders", "order_created", {"order_id": "o-1"})
    event = parse_event(body, Data())
    assert event.id == body["id"] and event.type == "order_created" and event.source == "orders"
    assert event.data == {"order_id": "o-1"}


@pytest.mark.parametrize("body", [None, "text", [], {"id": "x"},
                                  dict(new_event("orders", "t", {}), data={"order_id": 5})])
def test_malformed_events_are_refused_for_good(body):
    with pytest.raises(MalformedMessage):
        parse_event(body, Data())


def test_each_event_gets_its_own_id():
    assert new_event("a", "t", {})["id"] != new_event("a", "t", {})["id"]


def test_backoff_grows_and_is_capped():
    for attempt in range(1, 10):
        delay = backoff_seconds(attempt, base=0.5, cap=4)
        assert 0.25 <= delay <= min(4, 0.5 * 2 ** (attempt - 1))


def test_passwords_never_reach_logs():
    assert redact("postgresql://app:s3cret@db:5432/orders") == "postgresql://app:***@db:5432/orders"
    assert redact("sqlite:///var/orders.sqlite3") == "sqlite:///var/orders.sqlite3"


class _Message:
    """Just enough of a kombu message whose broker connection was reset under it."""

    def __init__(self, error):
        self.error = error
        self.channel = type("Channel", (), {"connection": object()})()
        self.delivery_info = {"routing_key": "evt-orders-order_confirmed"}

    def ack(self):
        raise self.error

    requeue = ack


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   BrokenPipeError(32, "Broken pipe")])
def test_an_ack_on_a_connection_the_broker_reset_does_not_kill_the_service(error, caplog):
    # nameko 2.14 lets these escape, which ends the worker and kills the container
    from services.common.messaging.consumers import DeadLetteringQueueConsumer

    consumer = DeadLetteringQueueConsumer()
    consumer.ack_message(_Message(error))
    eventlet.sleep(0)  # acks leave on the event loop's next turn
    consumer.requeue_message(_Message(error))
    assert "could not ack 1 message(s), the broker connection is gone" in caplog.text
    assert "could not requeue a message" in caplog.text


def test_other_errors_while_acking_are_logged_as_errors(caplog):
    from services.common.messaging.consumers import DeadLetteringQueueConsumer

    consumer = DeadLetteringQueueConsumer()
    consumer.ack_message(_Message(ValueError("a bug")))
    eventlet.sleep(0)
    [record] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert record.getMessage() == "could not ack 1 message(s)"
    assert "ValueError: a bug" in caplog.text


def test_sqlite_checkpoints_happen_in_the_checkpointer_thread_not_in_commits(tmp_path):
    from sqlalchemy import text

    from services.common.db.database import WalCheckpointer, make_engine, sqlite_file

    uri = "sqlite:///{}".format(tmp_path / "service.sqlite3")
    checkpointer = WalCheckpointer(sqlite_file(uri), interval=0.05).start()
    engine = make_engine(uri)
    try:
        with engine.begin() as connection:
            # commits no longer stop to copy the WAL into the database file
            assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
            connection.execute(text("CREATE TABLE t (a TEXT)"))
        for _ in range(200):
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES (:a)"), {"a": "x" * 500})

        def checkpointed():  # every WAL frame of the last round copied into the database file
            last = checkpointer.last
            return last and last[1] > 0 and last[1] == last[2]

        eventually(checkpointed, timeout=5, interval=0.05,
                   message=lambda: "a full checkpoint: {}".format(checkpointer.last))
    finally:
        checkpointer.stop()
        engine.dispose()
    # with no checkpointer running for the file, connections checkpoint as SQLite does by default
    engine = make_engine(uri)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 1000
    engine.dispose()


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_sqlite_write_transactions_hold_the_lock_from_begin_and_reads_take_none(tmp_path, scheme):
    import sqlite3

    from sqlalchemy import text

    from services.common.db.database import make_engine, read_only

    path = tmp_path / "service.sqlite3"
    engine = make_engine("{}:///{}".format(scheme, path))
    other = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (a TEXT)"))
        with engine.begin() as connection:
            connection.execute(text("SELECT count(*) FROM t")).scalar()  # reads only, yet holds the lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        with read_only(engine.connect()) as connection:
            with connection.begin():
                connection.execute(text("SELECT count(*) FROM t")).scalar()
                other.execute("BEGIN IMMEDIATE")  # a reader leaves the lock free
                other.execute("ROLLBACK")
                with pytest.raises(Exception, match="readonly"):
                    connection.execute(text("INSERT INTO t VALUES ('x')"))
        with engine.begin() as connection:  # the same pooled connection writes again
            connection.execute(text("INSERT INTO t VALUES ('y')"))
            assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        other.close()
        engine.dispose()


def test_sqlite_through_another_driver_is_refused():
    from services.common.db.database import make_engine

    with pytest.raises(ValueError, match="pysqlite"):
        make_engine("sqlite+pysqlcipher:///x.db")


@pytest.mark.parametrize("service", ["orders", "inventory", "notifications"])
def test_every_consumer_of_every_service_survives_a_reset_connection(service):
    """Event handlers, RPC entrypoints and RPC reply listeners alike: one plain
    nameko consumer (``from nameko.rpc import rpc``, say) would bring back the
    crash a broker restart caused."""
    import importlib

    from nameko.containers import ServiceContainer
    from nameko.messaging import QueueConsumer

    from services.common.messaging.consumers import SafeAckQueueConsumer

    module = importlib.import_module("services.{}.service".format(service))
    [service_class] = [value for value in vars(module).values()
                       if isinstance(value, type) and getattr(value, "name", None) == service]
    container = ServiceContainer(service_class, {"AMQP_URI": "memory://"})
    consumers = [ext for ext in container.subextensions if isinstance(ext, QueueConsumer)]
    assert consumers, "no queue consumer found"
    assert all(isinstance(ext, SafeAckQueueConsumer) for ext in consumers), consumers
    # and every entrypoint is traced by a summarising adapter (nameko-tracer looks up the exact
    # class; one it does not know gets the default adapter, which dumps every argument)
    import os

    from services.common.settings import load_config
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    adapters = load_config(os.path.join(root, "config.yaml"))["TRACER"]["ADAPTERS"]
    for entrypoint in container.entrypoints:
        kind = type(entrypoint)
        assert "{}.{}".format(kind.__module__, kind.__name__) in adapters, kind


def test_an_rpc_reply_nobody_waits_for_any_more_is_forgotten():
    from types import SimpleNamespace

    from nameko.rpc import RpcReply

    from services.common.errors import ServiceUnavailable
    from services.common.messaging.rpc import SafeAckReplyListener, TimedServiceProxy

    listener = SafeAckReplyListener()

    class Ping:
        reply_listener = listener

        def call_async(self):
            return RpcReply(listener.get_reply_event("correlation-1"))  # no answer ever comes

    proxy = TimedServiceProxy(SimpleNamespace(ping=Ping()), "inventory", timeout=0.05)
    with pytest.raises(ServiceUnavailable):
        proxy.ping()
    assert listener._reply_events == {}
