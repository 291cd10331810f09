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


@pytest.fixture
def database_proxies(service_config):
    """A cuttable proxy in front of each service's database, and the DB_URIS through them."""
    proxies, proxied = [], {}
    for key, uri in service_config["DB_URIS"].items():
        proxy, proxied[key] = proxied_uri(uri, 5432)
        proxies.append(proxy)
    yield proxies, proxied
    for proxy in proxies:
        proxy.stop()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_outage_gives_clean_503s_and_heals_without_a_restart(database_proxies, fault_run):
    proxies, proxied = database_proxies
    # the checks read the databases directly, not through the proxies
    run = fault_run(DB_URIS=proxied)
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        for proxy in proxies:
            proxy.cut()
        time.sleep(3)
        for proxy in proxies:
            proxy.restore()
        stream.accepted_after(len(stream.accepted) + 30)
    assert set(stream.outcomes) <= {202, 503}, (stream.outcomes, stream.bad_bodies[:3])
    assert stream.outcomes[503] > 0, "the outage was not felt"
    for status, body in stream.bad_bodies:
        assert body["error"] == "service_unavailable", body
        assert "database" in body["message"]
    run.assert_everything_settled(timeout=60)
