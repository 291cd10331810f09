"""processed_events.processed_at indexed: the inbox retention timer deletes by it.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])


def downgrade():
    op.drop_index("ix_processed_events_processed_at", "processed_events")
