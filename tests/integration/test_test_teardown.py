"""The test harness kills a test's services before it drops their databases (tests/support/fixtures.py).

A test that asked for ``container_factory`` before ``service_config`` had its
databases dropped (and its vhost deleted) while its services still ran.
"""
import psycopg2
import pytest
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_DSN

ALIVE_AT_KILL = []  # for each kill: did the service's database still exist?


class DatabaseAtKill(DependencyProvider):
    def kill(self):
        name = make_url(self.container.config["DB_URIS"]["inventory:InventoryBase"]).database
        with psycopg2.connect(PG_ADMIN_DSN) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            ALIVE_AT_KILL.append(cursor.fetchone() is not None)


class Watched:
    name = "watched"
    database_at_kill = DatabaseAtKill()

    @rpc
    def ping(self):
        return "pong"


@pytest.fixture(scope="module")
def checked_after_teardown():
    """Module-scoped: torn down after every function fixture of the test, so it sees what they did."""
    ALIVE_AT_KILL.clear()
    yield
    assert ALIVE_AT_KILL == [True], "the service was killed after its database was dropped"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_service_is_killed_before_its_database_is_dropped(checked_after_teardown, container_factory,
                                                           service_config):
    container_factory(Watched, service_config).start()
