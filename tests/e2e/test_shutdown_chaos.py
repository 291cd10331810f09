"""Services stopped (SIGTERM) and killed (SIGKILL) while orders stream in.

Whatever moment a process dies at, every order placed must end confirmed or
rejected, stock must add up (on hand = available + reserved, and reserved is
exactly what confirmed orders hold) and every order gets one notification.
"""
import collections
import random
import signal
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import create_engine, text

from tests.support import eventually

STOCK = {"KILL-A": 150, "KILL-B": 90}


class OrderStream(threading.Thread):
    """Places orders over HTTP until stopped, whatever state orders is in."""

    def __init__(self, system):
        super().__init__(daemon=True)
        self.system = system
        self.accepted = []
        self.refused = 0
        self.running = True
        self.random = random.Random(6)

    def run(self):
        while self.running:
            lines = [(sku, self.random.randint(1, 3)) for sku in STOCK if self.random.random() < 0.7]
            try:
                response = self.system.place_order("k{}@example.com".format(uuid.uuid4().hex[:6]),
                                                   lines or [("KILL-A", 1)])
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    self.refused += 1
            except requests.RequestException:
                self.refused += 1  # orders is down; the client would retry later
            time.sleep(0.05)


# Each service stopped or killed in turn while orders stream in, then every order left to
# settle; each test below checks one thing that must hold afterwards.
STEPS = [("inventory", signal.SIGTERM), ("notifications", signal.SIGKILL), ("orders", signal.SIGTERM),
         ("inventory", signal.SIGKILL), ("orders", signal.SIGKILL)]


@pytest.fixture(scope="module")
def chaos(module_service_config, module_system):
    system = module_system(module_service_config())
    system.start()
    system.create_products(*[(sku, sku, 100, stock) for sku, stock in STOCK.items()])
    stream = OrderStream(system)
    stream.start()
    codes = []
    try:
        for service, sig in STEPS:
            time.sleep(0.7)
            # a graceful stop may take SHUTDOWN_TIMEOUT (20 s) by design; once in a CI run orders
            # took over 15 s with orders streaming in (cause not found), so wait past the bound
            codes.append((service, sig, system.stop(service, sig=sig, timeout=30)))
            time.sleep(0.3)  # orders keep coming (or being refused) while it is down
            system.start(service)
        time.sleep(0.7)
    finally:
        stream.running = False
        stream.join(10)

    orders_db = create_engine(system.config["DB_URIS"]["orders:OrdersBase"])

    def all_final():
        with orders_db.connect() as connection:
            statuses = dict(connection.execute(text("SELECT id, status FROM orders")).all())
        return statuses if statuses and "pending" not in statuses.values() else None

    statuses = eventually(all_final, timeout=60, interval=0.5, message="every order final")
    with orders_db.connect() as connection:
        confirmed = dict(connection.execute(text(
            "SELECT l.sku, SUM(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id "
            "WHERE o.status = 'confirmed' GROUP BY l.sku")).all())
    orders_db.dispose()
    with system.rpc() as proxy:
        stock = {sku: proxy.inventory.get_stock(sku) for sku in STOCK}

        def notified():
            notes = proxy.notifications.list_notifications(limit=1000)
            return notes if len(notes) >= len(statuses) else None

        notes = eventually(notified, timeout=30, message="a notification per order")
    print("{} orders accepted, {} refused while orders was down; {}".format(
        len(stream.accepted), stream.refused, sorted(collections.Counter(statuses.values()).items())))
    return SimpleNamespace(system=system, stream=stream, codes=codes, statuses=statuses, confirmed=confirmed,
                           stock=stock, notes=notes)


def test_sigterm_stops_a_service_cleanly_and_sigkill_kills_it_mid_stream(chaos):
    for service, sig, code in chaos.codes:
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), (service, code)


def test_orders_are_taken_throughout(chaos):
    assert len(chaos.stream.accepted) > 20


def test_every_accepted_order_ends_confirmed_or_rejected(chaos):
    assert set(chaos.stream.accepted) <= set(chaos.statuses)
    assert set(chaos.statuses.values()) <= {"confirmed", "rejected"}
    assert "confirmed" in chaos.statuses.values() and "rejected" in chaos.statuses.values()


def test_stock_adds_up_to_what_confirmed_orders_hold(chaos):
    for sku, on_hand in STOCK.items():
        stock = chaos.stock[sku]
        assert stock["on_hand"] == on_hand
        assert stock["on_hand"] == stock["available"] + stock["reserved"]
        assert stock["reserved"] == chaos.confirmed.get(sku, 0), (sku, stock, chaos.confirmed)


def test_every_order_is_notified_once_of_how_it_ended(chaos):
    statuses, notes = chaos.statuses, chaos.notes
    assert sorted(note["order_id"] for note in notes) == sorted(statuses)  # one each, none twice
    assert all(note["event_type"] == "order_" + statuses[note["order_id"]] for note in notes)


def test_all_three_stopped_at_once_each_exit_cleanly(chaos):
    # as a host shutting down would (last here: it stops the system)
    system = chaos.system
    processes = [system.processes.pop(key) for key in list(system.processes)]
    for process in processes:
        process.send_signal(signal.SIGTERM)
    assert [process.wait(15) for process in processes] == [0, 0, 0]
