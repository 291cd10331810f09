"""The batched psycopg2 dialect (services/common/db/pgwire.py) against a real PostgreSQL.

What it promises: fewer messages per transaction (``BEGIN`` with the first
statement, deferrable writes with the next statement or the ``COMMIT``),
and otherwise the behaviour of plain psycopg2: the same rows committed, a
failing deferred write fails its transaction as SQLAlchemy's usual error,
and no connection goes back to the pool inside a transaction.
"""
import psycopg2.extensions
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, create_engine, exc, insert, select, text

from services.common.db import pgwire
from services.common.db.database import make_engine, with_green_driver

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


class CountingCursor(psycopg2.extensions.cursor):
    """Counts the messages (queries) sent to the server, and keeps their text."""

    sent = []

    def execute(self, query, vars=None):
        CountingCursor.sent.append(query if isinstance(query, str) else query.decode())
        return super().execute(query, vars)


metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True),
              Column("name", String(40), nullable=False, unique=True))
ADD = insert(items).inline().execution_options(**{pgwire.DEFERRABLE: True})
NAMES = select(items.c.name).order_by(items.c.id)


@pytest.fixture
def engine(make_database):
    uri = make_database("notifications", "postgresql")  # any fresh database will do
    engine = create_engine(with_green_driver(uri), pool_size=1, max_overflow=0,
                           connect_args={"cursor_factory": CountingCursor})
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sent():
    CountingCursor.sent = []
    return CountingCursor.sent


def names(engine):
    with engine.connect() as connection:
        return [name for name, in connection.execute(NAMES)]


def server_status(connection):
    return connection.connection.dbapi_connection.info.transaction_status


def test_plain_postgresql_uris_use_the_batched_dialect():
    assert with_green_driver("postgresql://u@h/db").startswith("postgresql+{}://".format(pgwire.NAME))
    assert with_green_driver("postgresql+psycopg2://u@h/db").startswith("postgresql+psycopg2://")
    assert isinstance(make_engine("postgresql://u@127.0.0.1:1/db").dialect, pgwire.BatchingPGDialect)


def test_begin_and_deferred_writes_travel_with_the_next_statement_and_the_commit(engine, sent):
    names(engine)  # first connect: the dialect's own start-up queries
    del sent[:]
    with engine.begin() as connection:
        connection.execute(ADD, {"name": "a"})
        connection.execute(ADD, {"name": "b"})
        assert sent == []  # nothing sent yet
        assert [name for name, in connection.execute(NAMES)] == ["a", "b"]  # the read sees them
        connection.execute(ADD, {"name": "c"})
    # plain psycopg2: BEGIN, 3 inserts, the select, COMMIT = 6 messages
    assert len(sent) == 2, sent
    assert sent[0].startswith("BEGIN;") and sent[0].count("INSERT") == 2
    assert sent[1].count("INSERT") == 1 and sent[1].endswith("COMMIT")
    assert names(engine) == ["a", "b", "c"]


def test_a_transaction_of_deferred_writes_is_one_message_and_an_empty_one_none(engine, sent):
    names(engine)
    del sent[:]
    with engine.begin() as connection:
        connection.execute(ADD, {"name": "only"})
    assert len(sent) == 1 and sent[0].startswith("BEGIN;") and sent[0].endswith("COMMIT")
    del sent[:]
    with engine.begin():
        pass
    assert sent == []


RENAME = items.update().where(items.c.id == bindparam("item_id")).values(name=bindparam("new_name"))


def test_an_executemany_update_is_one_message_per_page_with_the_begin(engine, sent):
    """psycopg2's own executemany sends (and awaits) one message per parameter set."""
    with engine.begin() as connection:
        connection.execute(insert(items), [{"id": n, "name": "n{}".format(n)} for n in range(250)])
    del sent[:]
    with engine.begin() as connection:
        connection.execute(RENAME, [{"item_id": 0, "new_name": "it's 100%"}, {"item_id": 1, "new_name": "b;c"}])
    assert len(sent) == 2 and sent[0].startswith("BEGIN;") and sent[0].count("UPDATE") == 2, sent
    del sent[:]
    with engine.begin() as connection:
        connection.execute(RENAME, [{"item_id": n, "new_name": "m{}".format(n)} for n in range(2, 250)])
    assert [message.count("UPDATE") for message in sent[:-1]] == [100, 100, 48], "pages of 100; then COMMIT"
    assert names(engine)[:4] == ["it's 100%", "b;c", "m2", "m3"] and names(engine)[-1] == "m249"


def test_values_with_percent_signs_survive_being_sent_ahead_of_a_parameterised_statement(engine):
    with engine.begin() as connection:
        connection.execute(ADD, {"name": "100%s %(x)s %%"})
        found = connection.execute(select(items.c.name).where(items.c.name.like(text(":p"))), {"p": "100%"})
        assert [name for name, in found] == ["100%s %(x)s %%"]
    assert names(engine) == ["100%s %(x)s %%"]


def test_a_failing_deferred_write_fails_the_commit_as_integrity_error_and_nothing_is_kept(engine):
    with engine.begin() as connection:
        connection.execute(ADD, {"name": "taken"})
    with pytest.raises(exc.IntegrityError):
        with engine.begin() as connection:
            connection.execute(ADD, {"name": "new"})
            connection.execute(ADD, {"name": "taken"})  # fails only when sent, with the COMMIT
    assert names(engine) == ["taken"]
    with engine.connect() as connection:  # the pool's one connection is usable and out of any transaction
        assert server_status(connection) == IDLE
        connection.execute(ADD, {"name": "later"})
        connection.commit()
    assert names(engine) == ["taken", "later"]


def test_a_failing_deferred_write_fails_at_the_next_statement(engine):
    with engine.begin() as connection:
        connection.execute(ADD, {"name": "taken"})
    with pytest.raises(exc.IntegrityError):
        with engine.begin() as connection:
            connection.execute(ADD, {"name": "taken"})
            connection.execute(NAMES).all()
    assert names(engine) == ["taken"]


def test_rollback_drops_unsent_writes_and_ends_the_server_transaction(engine, sent):
    with engine.connect() as connection:
        connection.execute(NAMES).all()  # a transaction is open on the server now
        connection.execute(ADD, {"name": "never"})
        assert server_status(connection) != IDLE
        connection.rollback()
        assert server_status(connection) == IDLE
    assert not any("never" in message for message in sent)
    assert names(engine) == []


def test_a_connection_returned_mid_transaction_is_rolled_back(engine):
    connection = engine.connect()
    connection.execute(NAMES).all()
    raw = connection.connection.dbapi_connection
    assert raw.info.transaction_status != IDLE
    connection.close()  # no commit: the pool's reset must end the transaction
    assert raw.info.transaction_status == IDLE


def test_an_isolation_level_applies_without_leaving_the_dialect_s_transaction_handling(engine):
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as connection:
        assert connection.exec_driver_sql("SHOW transaction_isolation").scalar() == "serializable"
        connection.execute(ADD, {"name": "serial"})
        connection.commit()
        assert connection.connection.dbapi_connection.autocommit
    with engine.connect() as connection:  # the pooled connection is back at the server's default
        assert connection.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    assert names(engine) == ["serial"]
