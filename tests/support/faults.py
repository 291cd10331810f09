"""Pieces the fault tests share: a stream of orders, checks read straight from
the services' databases (so they work while RPC does not), and ``FaultRun``,
the set-up they all start from (the ``fault_run`` fixture makes one)."""
import threading
import time
from collections import Counter
from contextlib import contextmanager

import requests
from sqlalchemy import text

from services.common.db.database import make_engine
from tests.support import eventually, tokens
from tests.support.system import System

SKUS = [("FLT-{}".format(i), "Fault item {}".format(i), 100 + i, 100000) for i in range(4)]


class OrderStream:
    """Places orders over HTTP at about ``rate`` per second from a background thread.

    Keeps what came back: accepted order ids (202) and every other outcome,
    so a test can check that failures were clean (a JSON 503, a refused
    connection) and that nothing accepted was lost.
    """

    def __init__(self, system, rate=20.0):
        self.system = system
        self.interval = 1.0 / rate
        self.accepted = {}  # order id -> lines
        self.outcomes = Counter()
        self.bad_bodies = []
        self._running = False
        self._thread = None
        self._n = 0

    def start(self):
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._running = False
        self._thread.join(15)

    def _run(self):
        session = requests.Session()
        next_at = time.monotonic()
        while self._running:
            self._one(session)
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _one(self, session):
        self._n += 1
        sku = SKUS[self._n % len(SKUS)][0]
        lines = [(sku, 1 + self._n % 3)]
        try:
            email = "stream{}@example.com".format(self._n)
            response = session.post(self.system.url("/orders"), timeout=8, headers=tokens.customer(email), json={
                "customer_email": email,
                "lines": [{"sku": s, "quantity": q} for s, q in lines]})
        except requests.RequestException as exc:
            self.outcomes[type(exc).__name__] += 1
            session = requests.Session()
            return
        self.outcomes[response.status_code] += 1
        if response.status_code == 202:
            self.accepted[response.json()["id"]] = lines
        else:
            try:
                self.bad_bodies.append((response.status_code, response.json()))
            except ValueError:
                self.bad_bodies.append((response.status_code, response.text[:200]))

    def accepted_after(self, count):
        eventually(lambda: len(self.accepted) >= count, timeout=20,
                   message="{} accepted orders (so far {})".format(count, self.outcomes))


class Databases:
    """Read-only views of the three databases of a running system."""

    def __init__(self, config):
        uris = config["DB_URIS"]
        self.orders = make_engine(uris["orders:OrdersBase"])
        self.inventory = make_engine(uris["inventory:InventoryBase"])
        self.notifications = make_engine(uris["notifications:NotificationsBase"])

    def close(self):
        for engine in (self.orders, self.inventory, self.notifications):
            engine.dispose()

    def order_statuses(self):
        with self.orders.connect() as connection:
            return dict(connection.execute(text("SELECT id, status FROM orders")).all())

    def incomplete_orders(self):
        """Orders missing their lines or their first history entry: half-written."""
        with self.orders.connect() as connection:
            return connection.execute(text(
                "SELECT o.id FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id) "
                "OR NOT EXISTS (SELECT 1 FROM order_status_changes h WHERE h.order_id = o.id "
                "AND h.to_status = 'pending')")).scalars().all()

    def confirmed_quantities(self):
        with self.orders.connect() as connection:
            rows = connection.execute(text(
                "SELECT l.sku, SUM(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id "
                "WHERE o.status = 'confirmed' GROUP BY l.sku")).all()
        return {sku: int(total) for sku, total in rows}

    def stock(self):
        with self.inventory.connect() as connection:
            rows = connection.execute(text("SELECT sku, on_hand, reserved FROM products")).all()
        return {sku: (on_hand, reserved) for sku, on_hand, reserved in rows}

    def reservations(self):
        with self.inventory.connect() as connection:
            return dict(connection.execute(text("SELECT order_id, status FROM reservations")).all())

    def notified_orders(self):
        """Orders whose customer was sent a notification, and the most rows any one
        (order, event, channel) has: more than one would be a duplicate."""
        with self.notifications.connect() as connection:
            sent = set(connection.execute(text(
                "SELECT order_id FROM notifications WHERE sent_at IS NOT NULL")).scalars().all())
            copies = connection.execute(text(
                "SELECT COUNT(*) FROM notifications GROUP BY order_id, event_type, channel "
                "ORDER BY 1 DESC LIMIT 1")).scalar() or 0
        return sent, copies

    def notification_states(self, order_ids):
        """What became of the notifications of these orders (for failure messages)."""
        with self.notifications.connect() as connection:
            return [tuple(row) for row in connection.execute(text(
                "SELECT order_id, event_type, channel, status, attempt_count, last_error FROM notifications"
            )) if row[0] in order_ids] or "no notification rows"

    def unpublished(self):
        found = 0
        for engine in (self.orders, self.inventory):
            with engine.connect() as connection:
                found += connection.execute(text(
                    "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")).scalar()
        return found


def assert_everything_settled(stream, databases, timeout=45):
    """Every accepted order final, reserved once, notified once; stock conserved."""
    accepted = set(stream.accepted)
    assert accepted, "no order was accepted: {}".format(stream.outcomes)

    def settled():
        statuses = databases.order_statuses()
        missing = accepted - set(statuses)
        assert not missing, "accepted orders missing from the database: {}".format(sorted(missing)[:5])
        pending = [i for i in accepted if statuses[i] == "pending"]
        notified, _ = databases.notified_orders()
        unnotified = [i for i in accepted if i not in notified]
        assert not pending and not unnotified, "{} pending, {} not notified: {}".format(
            len(pending), len(unnotified), databases.notification_states(unnotified[:3]))
        return statuses

    statuses = eventually(settled, timeout=timeout, interval=0.5, message="every accepted order settled")
    assert {statuses[i] for i in accepted} == {"confirmed"}, Counter(statuses[i] for i in accepted)
    assert databases.incomplete_orders() == []
    # no event lost, none applied twice
    reservations = databases.reservations()
    assert all(reservations.get(i) == "reserved" for i in accepted)
    _, copies = databases.notified_orders()
    assert copies == 1, "a customer was notified twice about the same event"
    # stock conserved: what is reserved is exactly what confirmed orders hold
    stock = databases.stock()
    confirmed = databases.confirmed_quantities()
    for sku, _, _, on_hand in SKUS:
        assert stock[sku] == (on_hand, confirmed.get(sku, 0)), (sku, stock[sku], confirmed.get(sku))
    eventually(lambda: databases.unpublished() == 0, timeout=15, message="outboxes drained")


class FaultRun:
    """A started system holding the fault catalogue (SKUS), views of its databases,
    and the stream of orders a fault is staged under."""

    def __init__(self, config, log_dir, **overrides):
        """Not started yet: the system runs on ``config`` with ``overrides`` (say, an AMQP_URI or
        DB_URIS through a proxy); the database views read ``config``'s databases directly."""
        self.system = System(dict(config, **overrides), str(log_dir))
        self.databases = Databases(config)
        self.stream = None

    def start(self):
        self.system.start()
        self.system.create_products(*SKUS)
        return self

    def close(self, print_logs=False):
        try:
            self.system.stop_all()
            if print_logs:
                print(self.system.logs())
        finally:
            self.databases.close()

    @contextmanager
    def streaming(self, rate=20.0):
        """Orders stream in over HTTP at about ``rate`` per second while the block runs."""
        self.stream = OrderStream(self.system, rate=rate).start()
        try:
            yield self.stream
        finally:
            self.stream.stop()

    def assert_everything_settled(self, timeout=45):
        assert_everything_settled(self.stream, self.databases, timeout=timeout)


def make_system(service_config, tmp_path, **overrides):
    config = dict(service_config, **overrides)
    return System(config, str(tmp_path))
