"""Throwaway databases and ports, for the test suite and the benchmark.

Both need fresh, migrated databases per run (a SQLite file, or a PostgreSQL
database created and later dropped) and free loopback ports; this is the one
place that knows how.
"""
import os
import socket
import uuid

import psycopg2

from services.common.db.migrate import upgrade


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_admin(dsn, sql):
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def create_database(service, backend, directory, pg_admin_dsn, pg_uri_template, prefix="test"):
    """A migrated database for ``service``: ``(uri, name of a PostgreSQL database to drop or None)``."""
    if backend == "sqlite":
        uri, created = "sqlite:///{}".format(os.path.join(str(directory), service + ".sqlite3")), None
    else:
        created = "{}_{}_{}".format(prefix, service, uuid.uuid4().hex[:10])
        pg_admin(pg_admin_dsn, "CREATE DATABASE {}".format(created))
        uri = pg_uri_template.format(created)
    upgrade(service, uri)
    return uri, created


def drop_database(pg_admin_dsn, name):
    pg_admin(pg_admin_dsn, "DROP DATABASE IF EXISTS {} WITH (FORCE)".format(name))
