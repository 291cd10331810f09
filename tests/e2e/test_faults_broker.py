"""The services lose RabbitMQ while orders stream in, and get it back.

A real broker restart is staged with a TCP proxy between the services and
the broker (see tests/support/proxy.py): the broker on a test machine is shared with
other test runs and must not be stopped. Cutting the proxy closes every AMQP
connection the services hold and refuses new ones, exactly what they see
when the broker goes down; restoring it is the broker coming back.
test_faults_broker_restart.py restarts a private broker node for real.
"""
import time
from types import SimpleNamespace

import pytest

from tests.support.proxy import proxied


@pytest.fixture(scope="module")
def config(module_service_config):
    return module_service_config()


@pytest.fixture(scope="module")
def broker_proxy(config):
    """A cuttable proxy in front of the module's vhost, and the AMQP URI through it (stopped after the services)."""
    proxy, uri = proxied(config["AMQP_URI"], 5672)
    yield proxy, uri
    proxy.stop()


# The outage, once for the module; each test below checks one thing that holds after it.

@pytest.fixture(scope="module")
def outage(broker_proxy, config, module_fault_run):
    proxy, proxied_uri = broker_proxy
    run = module_fault_run(config, AMQP_URI=proxied_uri)
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        connections_before = proxy.connections
        proxy.cut()
        cut_at = len(stream.accepted)
        time.sleep(3)
        during = len(stream.accepted) - cut_at
        proxy.restore()
        restored_at = len(stream.accepted)
        stream.accepted_after(restored_at + 30)
    return SimpleNamespace(run=run, proxy=proxy, during=during, connections_before=connections_before)


def test_orders_are_taken_while_the_broker_is_away(outage):
    # the outbox holds their events
    assert outage.during > 0, outage.run.stream.outcomes


def test_no_order_is_refused(outage):
    stream = outage.run.stream
    assert set(stream.outcomes) == {202}, (stream.outcomes, stream.bad_bodies[:3])


def test_every_accepted_order_settles_once(outage):
    outage.run.assert_everything_settled(timeout=60)


def test_the_services_reconnect_by_themselves(outage):
    assert outage.proxy.connections > outage.connections_before, "the services never reconnected"
