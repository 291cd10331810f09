"""Each service's own database, through nameko-sqlalchemy.

nameko-sqlalchemy never reads engine options from config, so this module
sets the ones that matter here: one pool per database per process, shared
by every part of the service (``SharedEngine``), that never closes and
reopens connections under load; a ping of connections that sat idle, so a
restarted PostgreSQL is survived without a service restart; and for SQLite
the WAL journal, so readers never block the writer.

SQLite also gets its WAL checkpoints moved off the event loop. By default
the connection whose commit fills the WAL past 1,000 pages copies it into
the database file and fsyncs, inside that commit, and under eventlet the
whole process waits (15-30 ms here, every hundred or so commits). A
service's database runs a ``WalCheckpointer`` in a real OS thread instead,
and its connections no longer checkpoint on commit.

SQLite transactions that may write begin with ``BEGIN IMMEDIATE``
(SQLAlchemy's documented pysqlite recipe, with the dialect's ``do_begin``
in place of its ``begin`` event: the driver's own transaction handling is
switched off and ``ImmediateSQLiteDialect`` emits the statement). Left
to itself, pysqlite starts a transaction only at the first write, so a
read-then-write (``SELECT ... FOR UPDATE`` is a no-op on SQLite) could be
overwritten by another process that committed in between. With ``BEGIN
IMMEDIATE`` a transaction holds the write lock from its start, so it sees
every committed change before it decides. SQLite's busy handler sleeps
inside the C library, which under eventlet blocks the whole process (the
greenthread holding the lock included); so it is off, and waiting for the
lock happens in ``_begin_immediate``'s loop, which yields to other
greenthreads between tries. Only other processes make it wait in practice:
the services' transactions do no I/O, so while one holds the lock no other
greenthread of its process runs (instrumented benchmark runs counted no wait
on a lock held within the process), and an in-process queue in front of the
lock would have nothing to hand over.

Transactions that only read say so (``read_only``, and ``with
self.uow.read_only()``): they begin deferred, take no lock and read one
committed snapshot, so a poll or a GET never holds up a writer nor waits for
one. Their connection is ``PRAGMA query_only`` meanwhile, so a statement that
would write fails at once instead of writing without the write lock.
"""
import logging
import os
import re
import sqlite3
import time
import weakref

import eventlet
from eventlet import patcher
from nameko_sqlalchemy import Database
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker
from nameko_sqlalchemy.database import Session

from services.common.db import pgwire  # noqa: F401  (registers the batched psycopg2 dialect)
from services.common.settings import PlatformSettings

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


POOL_OVERFLOW = 2  # SQLite only: connections beyond the reserved ones, for the rare user holding two at once
POOL_TIMEOUT = 10  # seconds a user waits for a pooled connection before the pool gives up (a 503)


def engine_options(uri, max_workers=10, overflow=None, application_name=None):
    """``max_workers``: connections kept in the pool; ``overflow`` more may open (default ``max_workers``)."""
    if uri.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
    connect_args = {"connect_timeout": 5}
    if application_name:
        connect_args["application_name"] = application_name[:63]  # PostgreSQL's limit (NAMEDATALEN - 1)
    return {
        "pool_size": max_workers,
        "max_overflow": max_workers if overflow is None else overflow,
        "pool_timeout": POOL_TIMEOUT,
        "pool_recycle": 1800,
        "connect_args": connect_args,
    }


def with_green_driver(uri):
    """The URI with this project's dialect for its database's driver.

    Plain ``postgresql://`` URIs use psycopg2, which eventlet makes
    cooperative, through ``pgwire``: SQLAlchemy 2.1 would pick psycopg 3,
    which blocks the whole process (and with it AMQP heartbeats) during every
    query under eventlet, and ``pgwire``'s dialect is psycopg2 with fewer
    round trips per transaction; a URI naming a driver
    (``postgresql+psycopg2://``) is used as given. SQLite (``sqlite://`` or
    ``sqlite+pysqlite://``) always goes through ``ImmediateSQLiteDialect``:
    its transactions must begin as it begins them.
    """
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+{}://".format(pgwire.NAME) + uri[len(prefix):]
    for prefix in ("sqlite://", "sqlite+pysqlite://"):
        if uri.startswith(prefix):
            return "sqlite+{}://".format(SQLITE_DRIVER) + uri[len(prefix):]
    return uri


def make_engine(uri, max_workers=10, overflow=None, application_name=None):
    uri = with_green_driver(uri)
    if uri.startswith("sqlite") and make_url(uri).get_driver_name() != SQLITE_DRIVER:
        raise ValueError("SQLite is used through pysqlite only (sqlite:// or sqlite+pysqlite://)")
    engine = create_engine(uri, **engine_options(uri, max_workers, overflow, application_name))
    if uri.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)  # a pool event: statements dispatch none
    else:
        event.listen(engine, "checkin", _note_idle)
        event.listen(engine, "checkout", _ping_if_idle)
    return engine


PING_AFTER_IDLE = 2.0  # seconds a pooled connection may sit unused before its next checkout pings it


def _note_idle(_dbapi_connection, record):
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy):
    """Ping a connection that sat idle in the pool; a dead one is replaced (SQLAlchemy retries the checkout).

    ``pool_pre_ping`` pinged on every checkout: a round trip before every
    transaction, one in four or five of a busy service's. A connection in
    use moments ago is alive or, if the server went away meanwhile, its
    first statement fails as an outage (503, or the event retried) and
    SQLAlchemy then replaces every pooled connection. SQLAlchemy's
    documented custom pessimistic check: raising ``DisconnectionError``
    from ``checkout``.
    """
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()
    except Exception as exc:
        raise sa_exc.DisconnectionError("pooled connection is gone: {}".format(type(exc).__name__)) from exc


READ_ONLY = "read_only"  # execution option: this transaction only reads (see read_only())


def read_only(connection):
    """``connection`` (a ``Connection``, or a ``Session``'s) marked read-only: call before its first statement.

    On SQLite its transaction starts deferred (``BEGIN``): it takes no lock,
    reads one consistent snapshot (WAL) and never waits for writers, nor
    they for it. The connection is ``PRAGMA query_only`` meanwhile, so a
    statement that would write fails at once ("attempt to write a readonly
    database") instead of running without the write lock. Other databases
    ignore the mark. Returns the connection.
    """
    if isinstance(connection, OrmSession):
        return connection.connection(execution_options={READ_ONLY: True})
    return connection.execution_options(**{READ_ONLY: True})


SQLITE_DRIVER = "pysqlite_immediate"
_read_only_checkouts = weakref.WeakKeyDictionary()  # pooled connection (one checkout) -> its READ_ONLY mark


class ImmediateSQLiteDialect(SQLiteDialect_pysqlite):
    """pysqlite whose transactions begin read-only ones deferred and all others ``BEGIN IMMEDIATE``.

    A dialect rather than SQLAlchemy's ``begin`` event: any connection event
    listener on an engine makes every statement it runs dispatch events,
    which cost about 55 us a transaction here (a bare BEGIN IMMEDIATE, insert
    and commit take 20 us in sqlite3). ``read_only``'s execution option
    reaches ``do_begin`` through ``set_connection_execution_options``, the
    dialect's hook for options that shape a connection's transactions.
    """

    supports_statement_cache = True

    def set_connection_execution_options(self, connection, opts):
        super().set_connection_execution_options(connection, opts)
        if READ_ONLY in opts:  # for this checkout of the pooled connection, as long as it lasts
            _read_only_checkouts[connection.connection] = bool(opts[READ_ONLY])

    def do_begin(self, dbapi_connection):
        # ``dbapi_connection`` is the pool's proxy of this checkout
        read_only = _read_only_checkouts.get(dbapi_connection, False)
        raw = dbapi_connection.dbapi_connection
        if dbapi_connection.info.get(READ_ONLY, False) != read_only:  # kept per connection: set on a change only
            raw.execute("PRAGMA query_only={}".format(1 if read_only else 0))
            dbapi_connection.info[READ_ONLY] = read_only
        if read_only:
            raw.execute("BEGIN")
        else:
            _begin_immediate(raw)


registry.register("sqlite." + SQLITE_DRIVER, __name__, "ImmediateSQLiteDialect")


def _begin_immediate(dbapi_connection):
    """Start the transaction holding SQLite's write lock; wait for it without freezing the process."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    delay = SQLITE_RETRY_FIRST
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
    # the driver starts no transactions of its own: ImmediateSQLiteDialect.do_begin does
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


class SharedEngine:
    """One engine, and so one connection pool, per database per process.

    Every provider of a service that talks to its database (the service's
    ``Database``, the outbox, metrics and readiness, the notification
    sender) used to open an engine of its own: three or four pools per
    process, each with its own idle connections and its own overflow churn.
    Each now reserves the connections it can use at once, during
    ``setup``; the engine is made on first use, after every provider of the
    process has reserved (nameko sets up every extension before starting
    any), with a pool of the sum of the reservations, at most
    ``DB_POOL_SIZE`` on a database server: the process's connection budget
    (docs/operations.md). The last release disposes the engine.

    An SQLite file also gets its ``WalCheckpointer`` here, started before the
    first connection is made, so every connection skips checkpoints.
    """

    def __init__(self, uri, application_name=None, max_pool_size=None):
        self.uri = uri
        self.application_name = application_name
        self.max_pool_size = max_pool_size
        self.reservations = []  # ints, or callables read when the engine is made
        self.users = 0
        self._engine = None
        self.checkpointer = None

    @property
    def pool_size(self):
        """The reservations' sum; on a database server, at most ``max_pool_size`` (``DB_POOL_SIZE``).

        Workers spend most of their time outside a transaction (parsing,
        RPC, publishing), and a 2-core server runs only a few statements at
        once, so a pool smaller than the worker pool costs little: a user
        finding every connection busy waits for one (a green wait, no new
        connection). Many processes' pools must fit in ``max_connections``.
        SQLite files have no server and keep a connection per user.
        """
        reserved = sum(int(r() if callable(r) else r) for r in self.reservations)
        if self.max_pool_size and not self.uri.startswith("sqlite"):
            return min(reserved, self.max_pool_size)
        return reserved

    @property
    def overflow(self):
        """No overflow on a database server: overflow connections are closed on return, i.e. churn under load."""
        return POOL_OVERFLOW if self.uri.startswith("sqlite") else 0

    @property
    def engine(self):
        if self._engine is None:
            path = sqlite_file(self.uri)
            if path is not None and path not in _checkpointed:
                self.checkpointer = WalCheckpointer(path).start()
            self._engine = make_engine(self.uri, max(1, self.pool_size), overflow=self.overflow,
                                       application_name=self.application_name)
        return self._engine

    def dispose(self):
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None


_shared = {}  # (uri, service name) -> SharedEngine, in this process


class Reservation:
    """One provider's share of a ``SharedEngine``: ``engine`` to use, ``release()`` once (idempotent)."""

    def __init__(self, shared):
        self.shared = shared
        self.released = False
        self._sessions = None

    @property
    def uri(self):
        return self.shared.uri

    @property
    def engine(self):
        return self.shared.engine

    def sessions(self, **options):
        """A sessionmaker on the engine, made at first use: after every provider has reserved."""
        if self._sessions is None:
            self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False, **options)
        return self._sessions

    def release(self):
        """The last release of a shared engine disposes it."""
        if self.released:
            return
        self.released = True
        shared = self.shared
        shared.users -= 1
        if shared.users == 0:
            key = (shared.uri, shared.application_name)
            if _shared.get(key) is shared:
                del _shared[key]
            shared.dispose()


def shared_engine(container, base_name, connections):
    """Reserve ``connections`` (an int, or a callable read at first use) on the service's shared engine.

    Call from a provider's ``setup``; use the returned ``Reservation``'s
    ``engine`` once started, and ``release()`` it on ``stop``/``kill``.
    PostgreSQL sessions carry the service's name as ``application_name``
    (visible in ``pg_stat_activity``).
    """
    service_name = container.service_name
    uri = database_uri(container.config, service_name, base_name)
    key = (uri, service_name)
    shared = _shared.get(key)
    if shared is None:
        max_pool_size = PlatformSettings.from_config(container.config).db_pool_size
        shared = _shared[key] = SharedEngine(uri, application_name=service_name, max_pool_size=max_pool_size)
    shared.reservations.append(connections)
    shared.users += 1
    return Reservation(shared)


def worker_pool_size(container):
    """How many workers the container runs at once (MAX_WORKERS plus HTTP's own slots, see http.py).

    nameko has no public accessor for the pool's size once an extension has
    resized it, so this reads the container's private ``_worker_pool``.
    """
    pool = getattr(container, "_worker_pool", None)
    return pool.size if pool is not None else int(container.config.get("max_workers", 10))


class ServiceDatabase(Database):
    """nameko-sqlalchemy's ``Database`` on the service's shared engine: a connection per worker."""

    shared = None

    def setup(self):
        container = self.container
        self.shared = shared_engine(container, self.declarative_base.__name__, lambda: worker_pool_size(container))
        self.db_uri = self.shared.uri
        self._sessionmaker = None

    @property
    def engine(self):
        return self.shared.engine

    @property
    def Session(self):
        """Sessions on the shared engine (nameko-sqlalchemy's class), unless one was set."""
        return self._sessionmaker or self.shared.sessions(class_=Session, **self.session_options)

    @Session.setter
    def Session(self, value):  # nameko-sqlalchemy's tests and helpers may set it
        self._sessionmaker = value

    def stop(self):
        self.shared.release()

    kill = stop
