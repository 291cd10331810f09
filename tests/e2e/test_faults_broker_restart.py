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

import pytest

from tests.support import eventually


@pytest.fixture
def rabbit_config(private_broker):
    """The services use the private node's vhost "/", not a vhost on the shared broker."""
    return {"AMQP_URI": private_broker.amqp_uri}


def notification_backlog(broker):
    """Messages waiting in notifications' event queues, and whether those queues are durable."""
    queues = {name: state for name, state in broker.queues().items() if "--notifications." in name}
    assert queues, "notifications' queues are missing: {}".format(broker.queues())
    return sum(messages for _, messages in queues.values()), all(durable for durable, _ in queues.values())


def backlog_of_at_least(broker, count):
    backlog = notification_backlog(broker)
    return backlog if backlog[0] >= count else None


def test_broker_restart_loses_no_queued_event_and_every_accepted_order_settles(
        private_broker, fault_run, capsys):
    broker = private_broker
    run = fault_run()
    system = run.system
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        # notifications away: its order_confirmed events pile up in the broker
        system.stop("notifications")
        held, durable = eventually(lambda: backlog_of_at_least(broker, 20), timeout=20, interval=0.5,
                                   message="20 events queued for notifications")
        assert durable

        before_stop = len(stream.accepted)
        broker.stop()
        time.sleep(3)
        broker.start()
        while_down = len(stream.accepted) - before_stop

        # the queued events came back with the broker (persistent messages, durable queues)
        after_restart, durable = notification_backlog(broker)
        assert durable
        assert after_restart >= held, "{} events queued before the restart, {} after".format(
            held, after_restart)

        # more orders; settling them needs orders and inventory to reconnect by themselves
        up_at = len(stream.accepted)
        stream.accepted_after(up_at + 20)
        system.start("notifications")

    for service in ("orders", "inventory"):  # still the processes started before the restart
        assert system.processes[service, 1].poll() is None, "{} exited during the restart".format(service)
    assert while_down > 0, "no order was accepted while the broker was down: {}".format(stream.outcomes)
    assert set(stream.outcomes) == {202}, (stream.outcomes, stream.bad_bodies[:3])
    run.assert_everything_settled(timeout=60)
    parked = {name: messages for name, (_, messages) in broker.queues().items()
              if name.endswith(".dead-letters") and messages}
    assert not parked, "messages were dead-lettered: {}".format(parked)

    with capsys.disabled():
        logs = system.logs(tail=10 ** 6)
        print("\n{} orders accepted, {} while the broker was down; {} events queued for notifications "
              "before the restart, {} after; {} flushes of acks lost with the connection; {} redeliveries skipped "
              "as duplicates".format(len(stream.accepted), while_down, held, after_restart,
                                     logs.count("could not ack"), logs.count("already handled; skipped")))
