import pytest

from tests.support.broker import PrivateBroker
from tests.support.proxy import proxied
from tests.support.system import System


@pytest.fixture
def backend():
    """End-to-end tests run on SQLite unless a test asks for PostgreSQL."""
    return "sqlite"


@pytest.fixture
def system(service_config, tmp_path, request):
    running = System(service_config, str(tmp_path))
    yield running
    running.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(running.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def broker_proxy(service_config):
    """A cuttable proxy in front of the test's RabbitMQ vhost, and the AMQP URI through it."""
    proxy, uri = proxied(service_config["AMQP_URI"], 5672)
    yield proxy, uri
    proxy.stop()


@pytest.fixture
def private_broker(tmp_path, request):
    """A RabbitMQ node of the test's own (see tests/support/broker.py), stopped at teardown.

    For tests that restart the broker for real; the shared one must not be.
    """
    broker = PrivateBroker(tmp_path / "rabbitmq")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(broker.log_tail())
