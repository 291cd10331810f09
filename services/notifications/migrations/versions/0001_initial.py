"""Notifications and inbox.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

from services.common.db.migrate import create_inbox_table_v1

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(50), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False, index=True),
        sa.Column("recipient", sa.String(254), nullable=False, index=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("correlation_id", sa.String(64), nullable=True, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("event_id", "channel", name="one_per_event_and_channel"),
    )
    create_inbox_table_v1(op)


def downgrade():
    op.drop_table("processed_events")
    op.drop_table("notifications")
