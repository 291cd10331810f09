"""PostgreSQL through psycopg2 with fewer round trips per transaction.

Under eventlet every round trip to PostgreSQL costs a green thread a turn of
the event loop: it sends, parks, and runs again only when the loop comes
round to it, after every other ready green thread has had its go. In a busy
service that turn, not the database, was the cost (11.9 ms per statement in
the orders process at 32 orders in flight, against 0.02 ms for a bare
round trip), and a transaction held its pooled connection for every one of
them. So this dialect sends less often, with the same statements in the
same order:

- ``BEGIN`` leaves with the transaction's first statement, not on its own
  (psycopg2 sends it as a round trip of its own). The driver runs in
  autocommit mode and the dialect writes ``BEGIN``, ``COMMIT`` and
  ``ROLLBACK`` itself.
- An ``executemany`` of an UPDATE or DELETE is one message (per 100
  parameter sets), not one round trip per set.
- A statement run with the execution option ``deferrable=True`` (a write
  whose result nobody reads) is not sent at once: it goes out in front of the
  transaction's next statement, or with the ``COMMIT``, in the same message.
  PostgreSQL runs them in order and stops at the first error, so a failing
  deferred write fails the transaction, only later: at the next statement or
  at the commit, still inside the unit of work, as SQLAlchemy's usual
  exception (an ``IntegrityError`` is still one). Code that must see a
  write's error at that write does not mark it deferrable.

Nothing here changes what is committed or when a commit is confirmed: the
``COMMIT`` is sent and its answer awaited when SQLAlchemy commits, exactly
as before; only the messages are fewer. A rollback, including the pool's
reset of a returned connection, sends ``ROLLBACK`` whenever the server says
a transaction is open (``transaction_status``), so no connection goes back
to the pool inside one.
"""
import weakref

from psycopg2.extensions import TRANSACTION_STATUS_IDLE, encodings
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

NAME = "psycopg2_batched"
DEFERRABLE = "deferrable"  # execution option: the statement may ride with the next one
_BEGIN = "pg_begin_pending"  # connection info keys
_DEFERRED = "pg_deferred"
EXECUTEMANY_PAGE = 100  # parameter sets per message


_state = weakref.WeakKeyDictionary()  # psycopg2 connection -> {_BEGIN: bool, _DEFERRED: [SQL]}


def _info(connection):
    """The state of a psycopg2 connection (or of the one a pool proxy wraps); gone with the connection."""
    raw = getattr(connection, "dbapi_connection", connection)
    state = _state.get(raw)
    if state is None:
        state = _state[raw] = {}
    return state


class BatchingPGDialect(PGDialect_psycopg2):
    """psycopg2, sending ``BEGIN`` and deferrable writes together with the next statement."""

    supports_statement_cache = True

    def on_connect(self):
        parent = super().on_connect()

        def connect(dbapi_connection):
            if parent is not None:
                parent(dbapi_connection)
            dbapi_connection.autocommit = True  # BEGIN/COMMIT/ROLLBACK are sent by this dialect

        return connect

    def initialize(self, connection):
        super().initialize(connection)
        self.supports_sane_multi_rowcount = False  # see do_executemany

    def set_isolation_level(self, dbapi_connection, level):
        # SQLAlchemy's own isolation handling switches autocommit off for any
        # level but AUTOCOMMIT; here autocommit stays on, and a level other
        # than the server default is set per session
        if level == "AUTOCOMMIT":
            raise NotImplementedError("the batched psycopg2 dialect manages transactions itself")
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {}".format(level))
        finally:
            cursor.close()

    # transactions ----------------------------------------------------------------

    def do_begin(self, dbapi_connection):
        info = _info(dbapi_connection)
        info[_BEGIN] = True
        info[_DEFERRED] = []

    def do_commit(self, dbapi_connection):
        info = _info(dbapi_connection)
        begin, deferred = info.pop(_BEGIN, False), info.pop(_DEFERRED, None) or []
        if begin and not deferred:
            return  # nothing was sent: there is no transaction to commit
        parts = (["BEGIN"] if begin else []) + deferred + ["COMMIT"]
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(";\n".join(parts))
        finally:
            cursor.close()

    def do_rollback(self, dbapi_connection):
        info = _info(dbapi_connection)
        info.pop(_BEGIN, None)
        info.pop(_DEFERRED, None)
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        if raw.closed or raw.info.transaction_status == TRANSACTION_STATUS_IDLE:
            return
        cursor = raw.cursor()
        try:
            cursor.execute("ROLLBACK")
        finally:
            cursor.close()

    # statements --------------------------------------------------------------------

    def _pending(self, cursor):
        """What must go out before this statement (SQL text, or None); clears it."""
        info = _info(cursor.connection)
        begin, deferred = info.get(_BEGIN, False), info.get(_DEFERRED) or []
        if not begin and not deferred:
            return None
        info[_BEGIN], info[_DEFERRED] = False, []
        return ";\n".join((["BEGIN"] if begin else []) + deferred)

    def _defer(self, cursor, statement, parameters, context):
        """Keep a deferrable statement for the next message; True if kept."""
        if context is None or not context.execution_options.get(DEFERRABLE):
            return False
        compiled = context.compiled
        if compiled is not None and compiled.effective_returning:
            return False  # its result is read
        info = _info(cursor.connection)
        if _DEFERRED not in info:
            return False  # outside a transaction this dialect began
        sql = cursor.mogrify(statement, parameters)
        info[_DEFERRED].append(sql.decode(self._encoding(cursor)))
        return True

    @staticmethod
    def _encoding(cursor):
        return encodings.get(cursor.connection.encoding, "utf-8")

    def do_execute(self, cursor, statement, parameters, context=None):
        if self._defer(cursor, statement, parameters, context):
            return
        pending = self._pending(cursor)
        if pending is not None:
            # psycopg2 interpolates whenever parameters are given, even empty
            statement = pending.replace("%", "%%") + ";\n" + statement
        cursor.execute(statement, parameters)

    def do_execute_no_params(self, cursor, statement, context=None):
        if self._defer(cursor, statement, None, context):
            return
        pending = self._pending(cursor)
        if pending is not None:
            statement = pending + ";\n" + statement
        cursor.execute(statement)

    def do_executemany(self, cursor, statement, parameters, context=None):
        """An UPDATE or DELETE for each parameter set, ``EXECUTEMANY_PAGE`` to a message, after what is pending.

        (psycopg2's ``executemany`` sends one message per set and waits for
        each; INSERTs do not come here, SQLAlchemy's insertmanyvalues makes
        them one statement.) The cursor's rowcount is then the last
        statement's, so the dialect does not claim a sane multi-row count.
        """
        pending = self._pending(cursor)
        head = [pending.encode(self._encoding(cursor))] if pending is not None else []
        for start in range(0, len(parameters), EXECUTEMANY_PAGE):
            page = [cursor.mogrify(statement, values) for values in parameters[start:start + EXECUTEMANY_PAGE]]
            cursor.execute(b";\n".join(head + page))
            head = []


registry.register("postgresql." + NAME, __name__, "BatchingPGDialect")
