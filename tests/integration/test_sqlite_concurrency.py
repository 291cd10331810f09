"""SQLite shared by two processes, and by greenthreads of one process (issue 11, item 5).

Without ``BEGIN IMMEDIATE`` the driver starts a transaction only at the first
write, so a read-then-write in one process can be overwritten by another
process that committed in between (a lost update). And SQLite's own busy wait
blocks the whole eventlet process, so a greenthread waiting for the write lock
froze the greenthread holding it. Read-only transactions begin deferred: they
take no lock and refuse to write.
"""
import json
import subprocess
import sys
import time

import eventlet
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from services.common.db.database import make_engine, read_only
from services.common.db.migrate import upgrade
from services.orders import domain
from services.orders.models import Order, StatusChange
from tests.conftest import ROOT
from tests.support import eventually


def _run(uri, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "tests.support.sqlite_race", uri, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _history_is_a_chain(history, final_status):
    """Each change starts where the previous one ended, follows the state machine, ends at the order's status."""
    assert history[0].from_status is None
    for previous, change in zip(history, history[1:]):
        assert change.from_status == previous.to_status, [(h.from_status, h.to_status) for h in history]
        assert domain.can_become(change.from_status, change.to_status)
    assert history[-1].to_status == final_status


def test_cancel_and_confirm_in_two_processes_lose_no_update(tmp_path):
    uri = "sqlite:///{}".format(tmp_path / "orders.sqlite3")
    upgrade("orders", uri)
    placed = _run(uri, "place")
    out, err = placed.communicate(timeout=60)
    assert placed.returncode == 0, err
    order_id = json.loads(out.splitlines()[-1])["id"]

    pause = tmp_path / "pause"
    pause.mkdir()
    canceller = _run(uri, "cancel", order_id, str(pause))
    try:
        # the cancel has read the order (pending) and waits before writing
        eventually(lambda: (pause / "read").exists() or canceller.poll() is not None, timeout=60,
                   message="the cancelling process to read the order")
        assert canceller.poll() is None, canceller.communicate()[1]
        confirmer = _run(uri, "confirm", order_id)
        try:
            # the confirm either finishes now (it was not kept out: the old,
            # lost-update behaviour) or waits for the cancel's transaction
            confirmer.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        (pause / "go").touch()
        c_out, c_err = canceller.communicate(timeout=60)
        f_out, f_err = confirmer.communicate(timeout=60)
    finally:
        for process in (canceller,):
            if process.poll() is None:
                process.kill()
    assert canceller.returncode == 0, c_err
    assert confirmer.returncode == 0, f_err

    engine = make_engine(uri)
    try:
        with engine.connect() as connection:
            status = connection.execute(select(Order.status).where(Order.id == order_id)).scalar_one()
            history = connection.execute(select(StatusChange).where(StatusChange.order_id == order_id)
                                         .order_by(StatusChange.id)).all()
    finally:
        engine.dispose()
    _history_is_a_chain(history, status)
    # the cancel went first: the confirm that came later must have seen it
    assert status == domain.CANCELLED
    assert [(h.from_status, h.to_status) for h in history] == [(None, "pending"), ("pending", "cancelled")]


def test_waiting_for_the_write_lock_does_not_freeze_the_process(tmp_path):
    """A greenthread waiting for SQLite's write lock lets the others (the holder included) run."""
    uri = "sqlite:///{}".format(tmp_path / "orders.sqlite3")
    upgrade("orders", uri)
    engine = make_engine(uri)
    ticks = []
    holding = eventlet.event.Event()

    def ticker():
        while True:
            ticks.append(time.monotonic())
            eventlet.sleep(0.01)

    def holder():
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO catalogue (sku, name, price, active, version) "
                                    "VALUES ('A', 'a', 1, 1, 1)"))
            holding.send()
            eventlet.sleep(0.5)  # e.g. waiting on the network while the write lock is held
        return time.monotonic()

    def writer():
        holding.wait()
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO catalogue (sku, name, price, active, version) "
                                    "VALUES ('B', 'b', 1, 1, 1)"))
        return time.monotonic()

    tick = eventlet.spawn(ticker)
    try:
        held, written = eventlet.spawn(holder), eventlet.spawn(writer)
        with eventlet.Timeout(60):
            released_at, written_at = held.wait(), written.wait()
    finally:
        tick.kill()
        engine.dispose()
    assert written_at >= released_at  # the writer got the lock once the holder let go
    during = [t for t in ticks if t < released_at]
    # the ticker ran through the hold (about 50 ticks; a frozen process gives one or two)
    assert len(during) >= 5, len(during)


def test_a_read_only_transaction_neither_waits_for_the_writer_nor_sees_its_uncommitted_rows(tmp_path):
    uri = "sqlite:///{}".format(tmp_path / "orders.sqlite3")
    upgrade("orders", uri)
    engine = make_engine(uri)
    holding, released = eventlet.event.Event(), []
    insert = text("INSERT INTO catalogue (sku, name, price, active, version) VALUES (:sku, 'a', 1, 1, 1)")

    def holder():
        with engine.begin() as connection:
            connection.execute(insert, {"sku": "A"})
            holding.send()
            eventlet.sleep(0.5)
        released.append(time.monotonic())

    def reader():
        holding.wait()
        with read_only(engine.connect()) as connection:
            skus = connection.execute(text("SELECT sku FROM catalogue")).scalars().all()
        return skus, time.monotonic()

    try:
        held, read = eventlet.spawn(holder), eventlet.spawn(reader)
        with eventlet.Timeout(60):
            skus, read_at = read.wait()
            held.wait()
    finally:
        engine.dispose()
    assert read_at < released[0]  # it did not wait for the write lock
    assert skus == []  # and read the committed state only


def test_a_write_in_a_read_only_transaction_fails_and_the_connection_writes_again_afterwards(tmp_path):
    uri = "sqlite:///{}".format(tmp_path / "orders.sqlite3")
    upgrade("orders", uri)
    engine = make_engine(uri, max_workers=1, overflow=0)  # one connection: the same one every time
    insert = text("INSERT INTO catalogue (sku, name, price, active, version) VALUES (:sku, 'a', 1, 1, 1)")
    try:
        with pytest.raises(OperationalError, match="readonly"):
            with read_only(engine.connect()) as connection:
                connection.execute(insert, {"sku": "A"})
        with engine.begin() as connection:
            connection.execute(insert, {"sku": "B"})
        with read_only(engine.connect()) as connection:
            assert connection.execute(text("SELECT sku FROM catalogue")).scalars().all() == ["B"]
    finally:
        engine.dispose()
