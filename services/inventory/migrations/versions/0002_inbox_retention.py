"""processed_events.processed_at indexed: the inbox retention timer deletes by it.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])


def downgrade():
    op.drop_index("ix_processed_events_processed_at", "processed_events")
