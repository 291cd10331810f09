"""processed_events.processed_at indexed: the inbox retention timer deletes by it.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

from services.common.db.migrate import drop_inbox_processed_at_index, index_inbox_by_processed_at

revision = "0002"
down_revision = "0001"


def upgrade():
    index_inbox_by_processed_at(op)


def downgrade():
    drop_inbox_processed_at_index(op)
