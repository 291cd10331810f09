"""RabbitMQ really restarted while orders stream in (issue 7).

test_faults_broker.py cuts a proxy, which proves the services reconnect but
not that anything survives a broker restart: the broker there never stops.
Here the services run on a RabbitMQ node of the test's own (tests/support/broker.py),
which is shut down and booted again on the same data directory.

To prove persistence and not only reconnection, notifications is stopped
first, so that its durable queue holds the orders' persistent
order_confirmed events when the broker goes down; those events must still be
there after the restart, and every customer must be notified once
notifications is back. Orders placed while the broker is down wait in the
orders outbox and are delivered when it is back.
"""
import time
from types import SimpleNamespace

import pytest

from tests.support import eventually
from tests.support.broker import PrivateBroker


def notification_backlog(broker):
    """Messages waiting in notifications' event queues, and whether those queues are durable."""
    queues = {name: state for name, state in broker.queues().items() if "--notifications." in name}
    assert queues, "notifications' queues are missing: {}".format(broker.queues())
    return sum(messages for _, messages in queues.values()), all(durable for durable, _ in queues.values())


def backlog_of_at_least(broker, count):
    backlog = notification_backlog(broker)
    return backlog if backlog[0] >= count else None


# The restart, run once for the module on a node of its own; each test below checks one
# thing that must hold after it.

@pytest.fixture(scope="module")
def private_node(tmp_path_factory, request):
    """A RabbitMQ node of the module's own (tests/support/broker.py), stopped after the services."""
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    failures = request.session.testsfailed
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
        if request.session.testsfailed > failures:
            print(broker.log_tail())


@pytest.fixture(scope="module")
def restart(private_node, module_service_config, module_fault_run):
    broker = private_node
    # the services use the private node's vhost "/", not a vhost on the shared broker
    run = module_fault_run(module_service_config(amqp_uri=broker.amqp_uri))
    system = run.system
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        # notifications away: its order_confirmed events pile up in the broker
        system.stop("notifications")
        held, durable_before = eventually(lambda: backlog_of_at_least(broker, 20), timeout=20, interval=0.5,
                                          message="20 events queued for notifications")

        before_stop = len(stream.accepted)
        broker.stop()
        time.sleep(3)
        broker.start()
        while_down = len(stream.accepted) - before_stop
        after_restart, durable_after = notification_backlog(broker)

        # more orders; settling them needs orders and inventory to reconnect by themselves
        up_at = len(stream.accepted)
        stream.accepted_after(up_at + 20)
        system.start("notifications")
    return SimpleNamespace(run=run, broker=broker, stream=stream, held=held, after_restart=after_restart,
                           durable=(durable_before, durable_after), while_down=while_down)


def test_notifications_queues_are_durable(restart):
    assert restart.durable == (True, True)


def test_events_queued_before_the_restart_are_still_queued_after_it(restart):
    # persistent messages, durable queues: they came back with the broker
    assert restart.after_restart >= restart.held, "{} events queued before the restart, {} after".format(
        restart.held, restart.after_restart)


def test_orders_and_inventory_reconnect_without_being_restarted(restart):
    for service in ("orders", "inventory"):  # still the processes started before the restart
        assert restart.run.system.processes[service, 1].poll() is None, "{} exited during the restart".format(service)


def test_orders_are_accepted_while_the_broker_is_down(restart):
    assert restart.while_down > 0, "no order was accepted while the broker was down: {}".format(
        restart.stream.outcomes)


def test_no_order_is_refused(restart):
    assert set(restart.stream.outcomes) == {202}, (restart.stream.outcomes, restart.stream.bad_bodies[:3])


def test_every_accepted_order_settles_once(restart, capsys):
    restart.run.assert_everything_settled(timeout=60)
    with capsys.disabled():
        logs = restart.run.system.logs(tail=10 ** 6)
        print("\n{} orders accepted, {} while the broker was down; {} events queued for notifications "
              "before the restart, {} after; {} flushes of acks lost with the connection; {} redeliveries skipped "
              "as duplicates".format(len(restart.stream.accepted), restart.while_down, restart.held,
                                     restart.after_restart, logs.count("could not ack"),
                                     logs.count("already handled; skipped")))


def test_nothing_is_dead_lettered(restart):
    restart.run.assert_everything_settled(timeout=60)  # whatever was going to be dead-lettered has been
    parked = {name: messages for name, (_, messages) in restart.broker.queues().items()
              if name.endswith(".dead-letters") and messages}
    assert not parked, "messages were dead-lettered: {}".format(parked)
