"""Real delivery: addresses, retry state, attempt history, customer preferences.

Revision ID: 0002

Rows written before this revision were recorded as ``sent`` through the log
channel; they keep that status, with no attempts.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("address", sa.String(512), nullable=True))
        batch.add_column(sa.Column("html_body", sa.Text, nullable=True))
        batch.add_column(sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("round_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text, nullable=True))
        batch.create_index("ix_notifications_due", ["status", "next_attempt_at"])
    op.execute("UPDATE notifications SET address = recipient")

    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("notification_id", sa.Integer, sa.ForeignKey("notifications.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
    )
    op.create_table(
        "notification_preferences",
        sa.Column("customer_email", sa.String(254), primary_key=True),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("device_token", sa.String(512), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade():
    op.drop_table("notification_preferences")
    op.drop_table("notification_attempts")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index("ix_notifications_due")
        for column in ("last_error", "next_attempt_at", "round_attempts", "attempt_count",
                       "html_body", "address"):
            batch.drop_column(column)
