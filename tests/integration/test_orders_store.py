"""Orders' storage on both databases: a status move reads the locked order and its lines in one statement."""
import uuid

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.common.db.database import make_engine
from services.common.messaging.events import utcnow
from services.orders import store


@pytest.fixture
def engine(make_database, backend):
    engine = make_engine(make_database("orders", backend))
    yield engine
    engine.dispose()


def place(engine, lines):
    order_id = str(uuid.uuid4())
    priced = [{"sku": sku, "name": sku.title(), "quantity": quantity, "unit_price": 100} for sku, quantity in lines]
    with Session(engine) as session, session.begin():
        store.insert_order(session, order_id, {"customer_email": "a@example.com"}, priced,
                           100 * sum(q for _, q in lines), None, "pending", utcnow())
    return order_id


def test_a_move_reads_the_order_and_its_lines_in_one_statement_and_keeps_them_in_order(engine):
    order_id = place(engine, [("c-sku", 3), ("a-sku", 1), ("b-sku", 2)])
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(engine) as session, session.begin():
        locked = store.lock_order(session, order_id)
        order = store.with_lines(session, locked)
        store.move_order(session, locked, {"status": "confirmed", "updated_at": utcnow()}, "stock reserved")
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1, reads  # was two: the locked order, then its lines
    assert (locked.id, locked.status, locked.customer_email) == (order_id, "pending", "a@example.com")
    assert [(line.sku, line.quantity) for line in order["lines"]] == [("c-sku", 3), ("a-sku", 1), ("b-sku", 2)]
    assert order["total"] == 600 and "sku" not in order
    with Session(engine) as session:
        assert store.order(session, order_id).status == "confirmed"
    assert store.lock_order(Session(engine), str(uuid.uuid4())) is None


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_order_row_stays_locked_until_the_move_commits(engine):
    order_id = place(engine, [("a-sku", 1), ("b-sku", 1)])
    with Session(engine) as session, session.begin():
        store.lock_order(session, order_id)
        with engine.connect() as other:
            with pytest.raises(OperationalError):  # lock_not_available
                other.execute(text("SELECT id FROM orders WHERE id = :id FOR UPDATE NOWAIT"), {"id": order_id})
            other.rollback()
            # only the order is locked (FOR UPDATE OF orders), not its lines
            other.execute(text("SELECT sku FROM order_lines WHERE order_id = :id FOR UPDATE NOWAIT"),
                          {"id": order_id}).all()


def test_prices_are_those_of_the_orderable_products_among_the_skus_asked(engine):
    """One statement on both databases (an array parameter on PostgreSQL, an IN list on SQLite)."""
    from services.orders.models import CatalogueItem

    with Session(engine) as session, session.begin():
        session.add_all([CatalogueItem(sku="p-1", name="Pen", price=150, active=True, version=1),
                         CatalogueItem(sku="p-2", name="Pad", price=300, active=True, version=1),
                         CatalogueItem(sku="p-3", name="Old", price=90, active=False, version=1)])
    with Session(engine) as session, session.begin():
        assert store.prices(session, ["p-2", "p-1", "p-3", "nope", "p-2"]) == {"p-1": ("Pen", 150), "p-2": ("Pad", 300)}
        assert store.prices(session, ["x'); DROP TABLE catalogue_items; --"]) == {}
        assert store.prices(session, ["p-1"]) == {"p-1": ("Pen", 150)}

