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
DECIDED = select(_reservations.c.order_id).where(_reservations.c.order_id == bindparam("order_id"))
INSERT_DECISION = insert(_reservations).execution_options(**{DEFERRABLE: True})  # read by nothing after
RESERVE_LINE = (update(_products)
                .where(_products.c.sku == bindparam("line_sku"), _products.c.active.is_(True),
                       _products.c.on_hand - _products.c.reserved >= bindparam("quantity"))
                .values(reserved=_products.c.reserved + bindparam("quantity"), updated_at=bindparam("now")))
UNDO_LINE = (update(_products).where(_products.c.sku == bindparam("line_sku"))
             .values(reserved=_products.c.reserved - bindparam("quantity")))
AVAILABLE = (select(_products.c.sku, _products.c.on_hand - _products.c.reserved, _products.c.active)
             .where(_products.c.sku.in_(bindparam("skus", expanding=True))))
ALL_PRODUCTS = select(Product).order_by(Product.sku)
# rows are locked in the order they are returned; "C" sorts as Python does (code points)
LOCK_PRODUCTS = (select(_products.c.sku).where(_products.c.sku.in_(bindparam("skus", expanding=True)))
                 .order_by(_products.c.sku.collate("C")).with_for_update())


class Stock:
    """The stock as ``domain.reserve`` sees it, kept in the session's transaction.

    A take is one conditional UPDATE, atomic in the database whatever the
    number of inventory processes.
    """

    def __init__(self, session):
        self.connection = session.connection()

    def take(self, sku, quantity):
        result = self.connection.execute(RESERVE_LINE, {"line_sku": sku, "quantity": quantity, "now": utcnow()})
        return result.rowcount == 1

    def give_back(self, sku, quantity):
        self.connection.execute(UNDO_LINE, {"line_sku": sku, "quantity": quantity})

    def available(self, skus):
        rows = self.connection.execute(AVAILABLE, {"skus": skus}).all()
        return {sku: (available if active else None) for sku, available, active in rows}


def lock_products(session, skus):
    """Lock the rows of ``skus`` (sorted), in that order, until the transaction ends (no-op on SQLite,
    where a writing transaction holds the whole database)."""
    if skus and session.get_bind().dialect.name != "sqlite":
        session.connection().execute(LOCK_PRODUCTS, {"skus": skus})


def product(session, sku, for_update=False):
    """The product, or None."""
    query = select(Product).where(Product.sku == sku)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).first()


def all_products(session):
    return session.scalars(ALL_PRODUCTS).all()


def is_decided(session, order_id):
    """Whether the order already has a reservation decision (or a tombstone)."""
    return session.connection().execute(DECIDED, {"order_id": order_id}).first() is not None


def record_decision(session, order_id, decision):
    now = utcnow()
    session.connection().execute(INSERT_DECISION, {
        "order_id": order_id, "status": decision.status, "lines": decision.lines, "reasons": decision.reasons,
        "created_at": now, "updated_at": now})


def add_stock(session, sku, quantity):
    """Add ``quantity`` on hand; False if that would pass MAX_STOCK.

    The sum is checked in the same statement that makes it, so two restocks
    racing cannot together pass the column's range.
    """
    return bool(session.execute(
        update(Product).where(Product.sku == sku, Product.on_hand <= MAX_STOCK - quantity)
        .values(on_hand=Product.on_hand + quantity, updated_at=utcnow())
    ).rowcount)
