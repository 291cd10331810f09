"""A correlation id from the broker is used only if it is a short token of safe
characters; anything else is replaced before logs, traces or the outbox see it."""
import pytest
from nameko.rpc import rpc
from nameko.standalone.rpc import ClusterRpcProxy

from services.common.observability.correlation import CorrelationId


class Echo:
    name = "echo"
    correlation_id = CorrelationId()

    @rpc
    def correlation(self):
        return self.correlation_id


@pytest.fixture
def echo(container_factory, rabbit_config):
    container = container_factory(Echo, rabbit_config)
    container.start()
    return rabbit_config


def call_with(config, correlation_id):
    with ClusterRpcProxy(config, timeout=10, context_data={"correlation_id": correlation_id}) as proxy:
        return proxy.echo.correlation()


@pytest.mark.parametrize("bad", ["evil\nINFO forged log line", "x" * 65, "ann@example.com", "<script>",
                                 "a b", "", "\u00e9t\u00e9"])
def test_an_invalid_id_from_the_broker_is_replaced(echo, bad):
    used = call_with(echo, bad)
    assert used != bad
    assert len(used) == 32 and used.isalnum()


def test_a_valid_id_from_the_broker_is_kept(echo):
    for good in ("req-1", "a" * 64, "svc:orders.1_2-3"):
        assert call_with(echo, good) == good
