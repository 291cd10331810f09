"""The pytest fixtures over tests/support, shared by every tier (loaded by tests/conftest.py).

The configuration they build on (``service_config``, ``make_database``,
``backend``) stays in tests/conftest.py; a tier narrows it in its own
conftest (e2e runs on SQLite unless a test asks for PostgreSQL).
"""
from urllib.parse import urlparse

import pytest

from tests.support import free_port
from tests.support.broker import PrivateBroker
from tests.support.faults import FaultRun
from tests.support.proxy import proxied
from tests.support.system import System
from tests.support.vhosts import ManagementClient, VhostPipeline


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can tell at teardown that a test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def failed(request):
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


@pytest.fixture(scope="session")
def rabbit_manager(request):
    """nameko's fixture of the same name, with a timeout on every request (tests/support/vhosts.py)."""
    return ManagementClient(request.config.getoption("RABBIT_API_URI"))


@pytest.fixture(scope="session")
def vhost_pipeline(request, rabbit_manager):
    """nameko's fixture of the same name (``rabbit_config`` takes its vhost from it), but an error of
    the management API is retried instead of hanging every later test (tests/support/vhosts.py)."""
    username = urlparse(request.config.getoption("RABBIT_AMQP_URI")).username
    with VhostPipeline(rabbit_manager, username).run() as vhosts:
        yield vhosts


def _after_the_test_s_broker_and_databases(request):
    """Set up the test's vhost and databases first (if it has them), so they are torn down after.

    pytest tears fixtures down in the reverse order it set them up; a test
    asking for ``container_factory`` before ``service_config`` had its vhost
    deleted and its databases dropped under services still running, and
    their kill raced the broker closing their connections.
    """
    for name in ("rabbit_config", "make_database"):
        if name in request.fixturenames:
            request.getfixturevalue(name)


def _killed_after_the_test(request, build):
    """A factory of what ``build(*args)`` makes, each killed at teardown, before the test's vhost
    and databases go (see ``_after_the_test_s_broker_and_databases``)."""
    _after_the_test_s_broker_and_databases(request)
    made = []

    def make(*args):
        made.append(build(*args))
        return made[-1]
    yield make
    for each in made:
        try:
            each.kill()
        except Exception:  # as nameko's fixtures: a kill that fails has no test left to fail
            pass


@pytest.fixture
def container_factory(request):
    """nameko's fixture of the same name, torn down before the test's vhost and databases."""
    from nameko.containers import get_container_cls

    yield from _killed_after_the_test(
        request, lambda service_cls, config: get_container_cls(config)(service_cls, config))


@pytest.fixture
def runner_factory(request):
    """nameko's fixture of the same name, torn down before the test's vhost and databases."""
    from nameko.runners import ServiceRunner

    def build(config, *service_classes):
        runner = ServiceRunner(config)
        for service_cls in service_classes:
            runner.add_service(service_cls)
        return runner
    yield from _killed_after_the_test(request, build)


@pytest.fixture
def system(service_config, tmp_path, request):
    """The three services as real processes on the test's vhost and databases, not yet started."""
    running = System(service_config, str(tmp_path))
    yield running
    running.stop_all()
    if failed(request):
        print(running.logs())


@pytest.fixture(scope="module")
def module_system(tmp_path_factory, request):
    """Factory: ``module_system(config, **kwargs)``, a ``System`` (not started) for a scenario run
    once for a whole module; stopped after the module's last test, its logs printed if one failed."""
    systems = []
    failures = request.session.testsfailed

    def make(config, **kwargs):
        systems.append(System(config, str(tmp_path_factory.mktemp("system")), **kwargs))
        return systems[-1]

    yield make
    for running in systems:
        running.stop_all()
        if request.session.testsfailed > failures:
            print(running.logs())


@pytest.fixture
def fault_run(service_config, tmp_path, request):
    """Factory for the fault tests' set-up: ``fault_run(**overrides)`` starts the system on
    ``service_config`` with ``overrides`` (say, an AMQP_URI or DB_URIS through a proxy),
    creates the fault catalogue, and returns a ``FaultRun``.

    Its database views read ``service_config``'s databases directly, never through a
    proxy in ``overrides``. The system is stopped at teardown (before the proxies of
    fixtures the test asked for first), its logs printed if the test failed.
    """
    runs = []

    def start(**overrides):
        runs.append(FaultRun(service_config, tmp_path, **overrides))
        return runs[-1].start()

    yield start
    for run in runs:
        run.close(print_logs=failed(request))


@pytest.fixture(scope="module")
def module_fault_run(module_service_config, tmp_path_factory, request):
    """``fault_run`` for a fault staged once for a whole module, whose tests each check one
    behaviour after it: ``module_fault_run(config=None, **overrides)``, on ``config`` (from
    ``module_service_config``, made here if not given) with ``overrides``."""
    runs = []
    failures = request.session.testsfailed

    def start(config=None, **overrides):
        config = config or module_service_config()
        runs.append(FaultRun(config, tmp_path_factory.mktemp("system"), **overrides))
        return runs[-1].start()

    yield start
    for run in runs:
        run.close(print_logs=request.session.testsfailed > failures)


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
        if failed(request):
            print(broker.log_tail())


@pytest.fixture
def smtp(tmp_path):
    """A real SMTP server on loopback, not yet started: tests start, stop and slow it."""
    from tests.support.notifications_fakes import SmtpSink

    sink = SmtpSink(tmp_path, free_port())
    yield sink
    sink.stop()


@pytest.fixture
def provider():
    """A real HTTP server on loopback standing in for the SMS and push providers."""
    from tests.support.notifications_fakes import WebhookSink

    sink = WebhookSink().start()
    yield sink
    sink.stop()
