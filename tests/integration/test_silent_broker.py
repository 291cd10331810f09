"""A broker gone silent (a network partition: connections stay open, no answer comes) does not
hold a service's kill: AMQP waits for the broker's answer to a cancel and a close with no timeout."""
import time

import eventlet
import pytest

from services.common.messaging.consumers import KILL_TIMEOUT
from services.common.messaging.outbox import CLOSE_TIMEOUT
from tests.integration.conftest import ALL_SERVICES


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("service_cls", ALL_SERVICES, ids=lambda cls: cls.name)
def test_a_service_killed_while_its_broker_is_silent_dies_within_its_timeouts(
        container_factory, service_config, broker_proxy, service_cls):
    proxy, uri = broker_proxy
    container = container_factory(service_cls, dict(service_config, AMQP_URI=uri))
    container.start()
    proxy.freeze()
    started = time.monotonic()
    with eventlet.Timeout(30, AssertionError("the kill waited for a silent broker")):
        container.kill()
    assert time.monotonic() - started < KILL_TIMEOUT + CLOSE_TIMEOUT + 5
