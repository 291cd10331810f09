"""Fixtures shared by the whole suite.

eventlet must patch the standard library before anything else imports it
(nameko's own ``nameko test`` does the same), or the first container test
hangs.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402

import os  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import pytest  # noqa: E402

from scripts.throwaway import create_database, drop_database  # noqa: E402
from services.common.db.migrate import SERVICES  # noqa: E402
from services.common.settings import load_config  # noqa: E402
from tests.support import free_port, hangs, tokens  # noqa: E402
from tests.support.telemetry_spans import install_provider  # noqa: E402

pytest_plugins = ["tests.support.fixtures"]

install_provider()  # before any container installs its own: in-process spans are all recorded
hangs.install()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ADMIN_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URI_TEMPLATE = os.environ.get("TEST_PG_URI", "postgresql://postgres@127.0.0.1:5432/{}")

# Delays shortened so retries, relays and backoffs happen within a test.
FAST_SETTINGS = {
    "RPC_TIMEOUT": 3,
    "MAX_DELIVERY_ATTEMPTS": 3,
    "RETRY_BACKOFF_BASE": 0.05,
    "RETRY_BACKOFF_MAX": 0.2,
    "OUTBOX_RELAY_INTERVAL": 0.2,
    "OUTBOX_GRACE": 0.5,
    # the rate-limit tests lower these; the rest place orders quickly
    "ORDER_RATE_LIMIT": 100000,
    "ANONYMOUS_RATE_LIMIT": 100000,
}


@pytest.fixture
def make_database(tmp_path):
    """Factory: a fresh, migrated database for a service; dropped afterwards."""
    created = []

    def make(service, backend="sqlite"):
        uri, name = create_database(service, backend, tmp_path, PG_ADMIN_DSN, PG_URI_TEMPLATE)
        if name:
            created.append(name)
        return uri

    yield make
    for name in created:
        drop_database(PG_ADMIN_DSN, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """Run the test once per supported database."""
    return request.param


def build_service_config(rabbit_config, make_database, backend):
    """config.yaml as the services see it, on a private vhost and databases."""
    config = load_config(os.path.join(ROOT, "config.yaml"))
    config.pop("LOGGING", None)
    config.update(FAST_SETTINGS)
    config.update(tokens.SETTINGS)
    config["AMQP_URI"] = rabbit_config["AMQP_URI"]
    config["WEB_SERVER_ADDRESS"] = "127.0.0.1:{}".format(free_port())
    # inventory's admin API: a port of the test's own too (never config.yaml's 8001, shared with
    # every other test through SO_REUSEPORT)
    config["INVENTORY_WEB_SERVER_ADDRESS"] = "127.0.0.1:{}".format(free_port())
    config["DB_URIS"] = {
        "{}:{}".format(service, base): make_database(service, backend)
        for service, base in SERVICES.items()
    }
    return config


@pytest.fixture
def service_config(rabbit_config, make_database, backend):
    """config.yaml as the services see it, on a private vhost and databases."""
    return build_service_config(rabbit_config, make_database, backend)


@pytest.fixture(scope="module")
def module_service_config(request, vhost_pipeline, tmp_path_factory):
    """Factory: ``module_service_config(backend="sqlite", amqp_uri=None)``, a ``service_config``
    for a scenario run once for a whole module whose tests each check one behaviour of it.

    Each call gives databases and (unless ``amqp_uri`` names a broker of the module's own)
    a vhost of its own, kept until the module's last test.
    """
    broker = urlparse(request.config.getoption("RABBIT_AMQP_URI"))
    created = []

    def make(backend="sqlite", amqp_uri=None):
        directory = tmp_path_factory.mktemp("databases")

        def make_database(service, backend):
            uri, name = create_database(service, backend, directory, PG_ADMIN_DSN, PG_URI_TEMPLATE)
            if name:
                created.append(name)
            return uri

        if amqp_uri is None:
            vhost = vhosts.enter_context(vhost_pipeline.get())
            amqp_uri = "{}://{}/{}".format(broker.scheme, broker.netloc, vhost)
        return build_service_config({"AMQP_URI": amqp_uri}, make_database, backend)

    with ExitStack() as vhosts:
        yield make
    for name in created:
        drop_database(PG_ADMIN_DSN, name)

