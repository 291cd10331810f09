"""Orders' migration 0004 on both databases: idempotency keys already stored
move to the customer-scoped table (their customer taken from their order),
emails are stored lower-case, and the downgrade works."""
from datetime import datetime, timezone

from alembic import command
from sqlalchemy import text

from services.common.db.database import make_engine
from services.common.db.migrate import alembic_config, upgrade


def test_0004_keeps_stored_keys_under_their_customer(make_database, backend):
    uri = make_database("orders", backend)
    command.downgrade(alembic_config("orders", uri), "0003")
    engine = make_engine(uri)
    now = datetime.now(timezone.utc)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO orders (id, customer_email, status, total, correlation_id, created_at, updated_at) "
                "VALUES ('o-1', 'Ann@Example.COM', 'pending', 100, 'c', :now, :now)"), {"now": now})
            connection.execute(text(
                "INSERT INTO idempotency_keys (key, request_hash, order_id, status_code, response, created_at) "
                "VALUES ('k-1', 'h', 'o-1', 202, '{\"id\": \"o-1\"}', :now)"), {"now": now})
        upgrade("orders", uri)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT customer_email FROM orders")).scalar_one() == "ann@example.com"
            rows = connection.execute(text(
                "SELECT customer, key, order_id, status_code FROM customer_idempotency_keys")).all()
            assert [tuple(row) for row in rows] == [("ann@example.com", "k-1", "o-1", 202)]
            assert connection.execute(text("SELECT count(*) FROM rate_limit_counters")).scalar_one() == 0
        command.downgrade(alembic_config("orders", uri), "0003")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM idempotency_keys")).scalar_one() == 0
        upgrade("orders", uri)
    finally:
        engine.dispose()
