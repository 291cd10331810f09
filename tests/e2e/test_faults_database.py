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

from tests.support.faults import SKUS, Databases, OrderStream, assert_everything_settled, make_system
from tests.support.proxy import proxied as proxied_uri


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_outage_gives_clean_503s_and_heals_without_a_restart(service_config, tmp_path):
    proxies, proxied = [], {}
    for key, uri in service_config["DB_URIS"].items():
        proxy, proxied[key] = proxied_uri(uri, 5432)
        proxies.append(proxy)
    # the checks read the databases directly, not through the proxies
    databases = Databases(service_config)
    system = make_system(service_config, tmp_path, DB_URIS=proxied)
    try:
        system.start()
        system.create_products(*SKUS)
        stream = OrderStream(system, rate=20).start()
        try:
            stream.accepted_after(20)
            for proxy in proxies:
                proxy.cut()
            time.sleep(3)
            for proxy in proxies:
                proxy.restore()
            stream.accepted_after(len(stream.accepted) + 30)
        finally:
            stream.stop()
        assert set(stream.outcomes) <= {202, 503}, (stream.outcomes, stream.bad_bodies[:3])
        assert stream.outcomes[503] > 0, "the outage was not felt"
        for status, body in stream.bad_bodies:
            assert body["error"] == "service_unavailable", body
            assert "database" in body["message"]
        assert_everything_settled(stream, databases, timeout=60)
    finally:
        system.stop_all()
        databases.close()
        for proxy in proxies:
            proxy.stop()
