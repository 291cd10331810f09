"""processed_events.processed_at indexed: the inbox retention timer deletes by it.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

from services.common.db.migrate import drop_inbox_processed_at_index, index_inbox_by_processed_at

revision = "0003"
down_revision = "0002"


def upgrade():
    index_inbox_by_processed_at(op)


def downgrade():
    drop_inbox_processed_at_index(op)
