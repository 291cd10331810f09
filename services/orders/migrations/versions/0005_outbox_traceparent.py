"""outbox.traceparent: the W3C trace context of the transaction that wrote the row.

An event relayed after a restart is published under it, so it still joins
its order's trace (services/common/observability/telemetry.py). Rows written before this
revision have none and are published without trace headers.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade():
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade():
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("traceparent")
