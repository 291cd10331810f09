"""Each service's own database, through nameko-sqlalchemy.

nameko-sqlalchemy never reads engine options from config, so this subclass
sets the ones that matter here: a pool at least as large as the worker pool
(a connection per concurrent worker, no churn), pre-ping so a restarted
PostgreSQL is survived without a service restart, and for SQLite the WAL
journal and a busy timeout so readers never block the writer.

SQLite also gets its WAL checkpoints moved off the event loop. By default
the connection whose commit fills the WAL past 1,000 pages copies it into
the database file and fsyncs, inside that commit, and under eventlet the
whole process waits (15-30 ms here, every hundred or so commits). A
service's database runs a ``WalCheckpointer`` in a real OS thread instead,
and its connections no longer checkpoint on commit.

SQLite transactions begin with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented
pysqlite recipe: the driver's own transaction handling is switched off and
the ``begin`` event emits the statement). Left to itself, pysqlite starts a
transaction only at the first write, so a read-then-write (``SELECT ... FOR
UPDATE`` is a no-op on SQLite) could be overwritten by another process that
committed in between. With ``BEGIN IMMEDIATE`` a transaction holds the
write lock from its start, so it sees every committed change before it
decides. SQLite's busy handler sleeps inside the C library, which under
eventlet blocks the whole process (the greenthread holding the lock
included); so it is off, and waiting for the lock happens in
``_begin_immediate``'s loop, which yields to other greenthreads between
tries.
"""
import logging
import os
import re
import sqlite3
import time

import eventlet
from eventlet import patcher
from nameko_sqlalchemy import Database
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker
from nameko_sqlalchemy.database import Session

log = logging.getLogger(__name__)

DB_URIS_KEY = "DB_URIS"
CHECKPOINT_INTERVAL = 1.0  # seconds between checkpoints of the WAL
_threading = patcher.original("threading")
_checkpointed = {}  # SQLite file -> the WalCheckpointer running for it in this process
# SQLite's own busy handler sleeps inside the C library, blocking the whole
# process (the greenthread holding the lock included): it is off. A
# transaction waits for the write lock in _begin_immediate instead, up to
# SQLITE_LOCK_WAIT seconds, yielding between tries. Inside a transaction that
# holds the write lock, WAL mode has nothing else to wait for.
SQLITE_BUSY_TIMEOUT_MS = 0
SQLITE_LOCK_WAIT = 30.0
SQLITE_RETRY_FIRST, SQLITE_RETRY_MAX = 0.0005, 0.01  # seconds between tries


def engine_options(uri, max_workers=10):
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
    return {
        "pool_size": max_workers + 2,
        "max_overflow": max_workers,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 5},
    }


def with_green_driver(uri):
    """Plain ``postgresql://`` URIs use psycopg2, which eventlet makes cooperative.

    SQLAlchemy 2.1 would pick psycopg 3, which blocks the whole process (and
    with it AMQP heartbeats) during every query under eventlet.
    """
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix):]
    return uri


def make_engine(uri, max_workers=10):
    uri = with_green_driver(uri)
    engine = create_engine(uri, **engine_options(uri, max_workers))
    if uri.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _begin_immediate(connection):
    """Start the transaction holding SQLite's write lock; wait for it without freezing the process."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    delay = SQLITE_RETRY_FIRST
    dbapi_connection = connection.connection.dbapi_connection
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                # SQLAlchemy's type, so callers treat it as "busy" (503, retry) like any lock timeout
                raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        eventlet.sleep(delay)
        delay = min(delay * 2, SQLITE_RETRY_MAX)


def _sqlite_pragmas(dbapi_connection, _record):
    # the driver starts no transactions of its own: _begin_immediate does
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout={}".format(SQLITE_BUSY_TIMEOUT_MS))
    cursor.execute("PRAGMA foreign_keys=ON")
    path = _database_file(dbapi_connection)
    if path is not None and path in _checkpointed:
        cursor.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
    cursor.close()


def _database_file(dbapi_connection):
    for _, name, path in dbapi_connection.execute("PRAGMA database_list"):
        if name == "main":
            return os.path.realpath(path) if path else None
    return None


def sqlite_file(uri):
    """The file of an SQLite URI, or None (another database, or in memory)."""
    url = make_url(uri)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return os.path.realpath(url.database)


class WalCheckpointer:
    """Checkpoints an SQLite file's WAL every ``interval`` seconds from a real thread.

    PASSIVE checkpoints wait for no lock, so readers and the writer go on;
    sqlite3 releases the GIL while it copies and fsyncs, so the event loop
    keeps running on the other core meanwhile.
    """

    def __init__(self, path, interval=CHECKPOINT_INTERVAL):
        self.path = path
        self.interval = interval
        self.last = None  # (busy, frames in the WAL, frames checkpointed) of the last round
        self._stopped = _threading.Event()
        self._thread = _threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self):
        _checkpointed[self.path] = self
        self._thread.start()
        return self

    def stop(self):
        if _checkpointed.get(self.path) is self:
            del _checkpointed[self.path]
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self):
        connection = None
        try:
            while not self._stopped.wait(self.interval):
                if not os.path.exists(self.path):
                    continue  # not created yet: the service's own connections create it
                try:
                    if connection is None:
                        connection = sqlite3.connect("file:{}?mode=rw".format(self.path), uri=True, timeout=5,
                                                     check_same_thread=False)
                    self.last = tuple(connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
                except sqlite3.Error as exc:  # the next round tries again
                    log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
                    self.last = None
                if connection is not None and (self.last is None or self.last[1] < 0):
                    connection.close()  # failed, or opened before WAL was on: reconnect next round
                    connection = None
        finally:
            if connection is not None:
                connection.close()


def database_uri(config, service_name, base_name):
    return config[DB_URIS_KEY]["{}:{}".format(service_name, base_name)]


def redact(uri):
    """A URI fit for logs: the password replaced."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)


class ServiceDatabase(Database):
    checkpointer = None

    def setup(self):
        config = self.container.config
        service_name = self.container.service_name
        self.db_uri = database_uri(config, service_name, self.declarative_base.__name__)
        path = sqlite_file(self.db_uri)
        if path is not None and path not in _checkpointed:
            # before any connection is made, so every engine on the file skips checkpoints
            self.checkpointer = WalCheckpointer(path).start()
        self.engine = make_engine(self.db_uri, int(config.get("max_workers", 10)))
        self.Session = sessionmaker(
            bind=self.engine, class_=Session, expire_on_commit=False, **self.session_options
        )

    def stop(self):
        super().stop()
        self._stop_checkpointer()

    def kill(self):
        super().kill()
        self._stop_checkpointer()

    def _stop_checkpointer(self):
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
