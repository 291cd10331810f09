"""Inventory's storage: the statements every order runs, built once, and the stock they keep.

Building a statement and computing its cache key cost SQLAlchemy several
times what running a prebuilt one does, so the per-order statements are
module constants, run as Core on the session's own connection (the ORM's
load and flush were most of their cost).
"""
from sqlalchemy import bindparam, insert, select, update

from services.common.db.pgwire import DEFERRABLE
from services.common.messaging.events import utcnow
from services.common.validation import MAX_STOCK

from .models import Product, Reservation

_products, _reservations = Product.__table__, Reservation.__table__
_deferred = {DEFERRABLE: True}  # writes whose result nothing reads: they go out with the COMMIT
DECIDED = select(_reservations.c.order_id).where(_reservations.c.order_id.in_(bindparam("order_ids", expanding=True)))
INSERT_DECISION = insert(_reservations).execution_options(**_deferred)
AVAILABLE = (select(_products.c.sku, _products.c.on_hand - _products.c.reserved, _products.c.active)
             .where(_products.c.sku.in_(bindparam("skus", expanding=True))))
# rows are locked in the order they are returned; "C" sorts as Python does (code points)
LOCK_AVAILABLE = AVAILABLE.order_by(_products.c.sku.collate("C")).with_for_update()
# the rows are locked and their numbers known: the check was made in Python; the table's
# CHECK (reserved <= on_hand) still refuses the commit if that were ever wrong
TAKE = (update(_products).where(_products.c.sku == bindparam("line_sku"))
        .values(reserved=_products.c.reserved + bindparam("quantity"), updated_at=bindparam("now"))
        .execution_options(**_deferred))
ALL_PRODUCTS = select(Product).order_by(Product.sku)
_STOCK, _DECIDED = "inventory.stock", "inventory.decided"  # session.info keys, for one transaction


class LockedStock:
    """The stock of the products this transaction's orders name, read once and held still.

    On PostgreSQL the rows are locked (``FOR UPDATE``, in sku order) until the
    transaction ends; on SQLite the writing transaction holds the whole
    database. Nothing else can change them meanwhile, so reservations are
    decided from these numbers (``available``: {sku: quantity, or None if
    inactive}; an unknown sku is missing) and written with the commit,
    without a round trip each, whatever the number of inventory processes.
    """

    def __init__(self, session):
        self.session = session
        self.available = {}
        self._read = set()

    def lock(self, skus):
        """Read (and lock) those of ``skus`` not read yet; a batch locks all of its skus at once, first."""
        missing = sorted(set(skus) - self._read)
        if not missing:
            return
        statement = AVAILABLE if self.session.get_bind().dialect.name == "sqlite" else LOCK_AVAILABLE
        for sku, available, active in self.session.connection().execute(statement, {"skus": missing}):
            self.available[sku] = available if active else None
        self._read.update(missing)

    def take(self, quantities):
        """Reserve ``quantities`` ({sku: quantity}, each known to fit)."""
        connection, now = self.session.connection(), utcnow()
        for sku, quantity in quantities.items():
            self.available[sku] -= quantity
            connection.execute(TAKE, {"line_sku": sku, "quantity": quantity, "now": now})


def locked_stock(session, skus):
    """The transaction's ``LockedStock``, with ``skus`` read and locked."""
    stock = session.info.get(_STOCK)
    if stock is None:
        stock = session.info[_STOCK] = LockedStock(session)
    stock.lock(skus)
    return stock


def product(session, sku, for_update=False):
    """The product, or None."""
    query = select(Product).where(Product.sku == sku)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).first()


def all_products(session):
    return session.scalars(ALL_PRODUCTS).all()


def look_up_decisions(session, order_ids):
    """Which of ``order_ids`` have a decision, in one query, for ``is_decided`` to answer from."""
    decided = session.info.setdefault(_DECIDED, {})
    decided.update(dict.fromkeys(order_ids, False))
    decided.update(dict.fromkeys(session.connection().execute(DECIDED, {"order_ids": list(order_ids)}).scalars(),
                                 True))


def is_decided(session, order_id):
    """Whether the order already has a reservation decision (or a tombstone)."""
    if order_id not in session.info.get(_DECIDED, ()):
        look_up_decisions(session, [order_id])
    return session.info[_DECIDED][order_id]


def record_decision(session, order_id, decision):
    now = utcnow()
    session.connection().execute(INSERT_DECISION, {
        "order_id": order_id, "status": decision.status, "lines": decision.lines, "reasons": decision.reasons,
        "created_at": now, "updated_at": now})
    session.info.setdefault(_DECIDED, {})[order_id] = True


def add_stock(session, sku, quantity):
    """Add ``quantity`` on hand; False if that would pass MAX_STOCK.

    The sum is checked in the same statement that makes it, so two restocks
    racing cannot together pass the column's range.
    """
    return bool(session.execute(
        update(Product).where(Product.sku == sku, Product.on_hand <= MAX_STOCK - quantity)
        .values(on_hand=Product.on_hand + quantity, updated_at=utcnow())
    ).rowcount)
