"""Fixtures shared by the whole suite.

eventlet must patch the standard library before anything else imports it
(nameko's own ``nameko test`` does the same), or the first container test
hangs.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402

import os  # noqa: E402

import pytest  # noqa: E402

from scripts.throwaway import create_database, drop_database  # noqa: E402
from services.common.migrate import SERVICES  # noqa: E402
from services.common.settings import load_config  # noqa: E402
from tests import tokens  # noqa: E402
from tests.helpers import free_port  # noqa: E402

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


@pytest.fixture
def service_config(rabbit_config, make_database, backend):
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
def smtp(tmp_path):
    """A real SMTP server on loopback, not yet started: tests start, stop and slow it."""
    from tests.notifications_fakes import SmtpSink

    sink = SmtpSink(tmp_path, free_port())
    yield sink
    sink.stop()


@pytest.fixture
def provider():
    """A real HTTP server on loopback standing in for the SMS and push providers."""
    from tests.notifications_fakes import WebhookSink

    sink = WebhookSink().start()
    yield sink
    sink.stop()
