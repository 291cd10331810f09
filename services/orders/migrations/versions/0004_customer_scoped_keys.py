"""Idempotency keys scoped to their customer; customer emails stored normalised;
the shared rate-limit counters of POST /orders.

A key is looked up by (customer, key), so one customer's key can neither
replay nor reveal another's order. The old table is copied into the new one
(its customer taken from the order the key made) so retries in flight during
the upgrade still find their key. Emails are stored lower-case so that a
customer's orders are found by an indexed equality whatever case was typed.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    op.execute("UPDATE orders SET customer_email = lower(customer_email) "
               "WHERE customer_email <> lower(customer_email)")
    op.create_table(
        "customer_idempotency_keys",
        sa.Column("customer", sa.String(254), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_customer_idempotency_keys_created_at", "customer_idempotency_keys", ["created_at"])
    op.execute("INSERT INTO customer_idempotency_keys "
               "(customer, key, request_hash, order_id, status_code, response, created_at) "
               "SELECT orders.customer_email, k.key, k.request_hash, k.order_id, k.status_code, "
               "k.response, k.created_at FROM idempotency_keys k JOIN orders ON orders.id = k.order_id")
    op.drop_index("ix_idempotency_keys_created_at", "idempotency_keys")
    op.drop_table("idempotency_keys")
    op.create_table(
        "rate_limit_counters",
        sa.Column("bucket", sa.String(300), primary_key=True),
        sa.Column("window_start", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade():
    op.drop_table("rate_limit_counters")
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    # not carried back: keys of two customers may share a name, and every key
    # expires within IDEMPOTENCY_KEY_TTL anyway
    op.drop_index("ix_customer_idempotency_keys_created_at", "customer_idempotency_keys")
    op.drop_table("customer_idempotency_keys")
