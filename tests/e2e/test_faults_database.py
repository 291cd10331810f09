"""PostgreSQL becomes unreachable for a few seconds while orders stream in.

The database server is shared with other test runs, so the outage is staged
with a TCP proxy between the services and PostgreSQL (tests/support/proxy.py):
cutting it drops every pooled connection and refuses new ones.
Clients get a clear JSON 503 (never a 500 or a traceback), nothing is half
written, and the system recovers without a restart: events that could not
be handled during the outage are retried until the database is back.
"""
import time

import pytest

from tests.support.proxy import proxied as proxied_uri


@pytest.fixture(scope="module")
def config(module_service_config):
    return module_service_config("postgresql")


@pytest.fixture(scope="module")
def database_proxies(config):
    """A cuttable proxy in front of each service's database, and the DB_URIS through them
    (stopped after the services)."""
    proxies, proxied = [], {}
    for key, uri in config["DB_URIS"].items():
        proxy, proxied[key] = proxied_uri(uri, 5432)
        proxies.append(proxy)
    yield proxies, proxied
    for proxy in proxies:
        proxy.stop()


# The outage, once for the module on PostgreSQL; each test below checks one thing that
# holds after it.

@pytest.fixture(scope="module")
def outage(database_proxies, config, module_fault_run):
    proxies, proxied = database_proxies
    # the checks read the databases directly, not through the proxies. A cut that lands
    # on a COMMIT leaves its outcome unknown to the service: if the server did commit,
    # notifications claimed in that transaction are made due once the database is back
    # (Sender.release); a claim lost any other way waits for its lease to lapse, 300 s
    # by default: 15 here, within the test's wait.
    run = module_fault_run(config, DB_URIS=proxied, NOTIFY_LEASE=15)
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        for proxy in proxies:
            proxy.cut()
        time.sleep(3)
        for proxy in proxies:
            proxy.restore()
        stream.accepted_after(len(stream.accepted) + 30)
    return run


def test_clients_get_accepted_or_a_503_never_anything_else(outage):
    stream = outage.stream
    assert set(stream.outcomes) <= {202, 503}, (stream.outcomes, stream.bad_bodies[:3])
    assert stream.outcomes[503] > 0, "the outage was not felt"


def test_each_503_names_the_database_in_a_json_error(outage):
    for status, body in outage.stream.bad_bodies:
        assert body["error"] == "service_unavailable", body
        assert "database" in body["message"]


def test_every_accepted_order_settles_once_without_a_restart(outage):
    outage.assert_everything_settled(timeout=60)
