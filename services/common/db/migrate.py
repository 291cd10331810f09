"""Schema migrations: one Alembic history per service, in its own database.

``python -m services.common.db.migrate`` brings all three databases to the
newest revision (run.sh and the tests do this; no service creates tables at
import time). Each service's ``migrations/env.py`` hands its metadata to
``run_migrations``.
"""
import argparse
import os
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, String

from services.common.db.database import database_uri, make_engine, redact
from services.common.settings import load_config

SERVICES = {
    "orders": "OrdersBase",
    "inventory": "InventoryBase",
    "notifications": "NotificationsBase",
}
ROOT = Path(__file__).resolve().parents[3]


def alembic_config(service, uri):
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    config.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    return config


def upgrade(service, uri, revision="head"):
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
    command.upgrade(alembic_config(service, uri), revision)


def upgrade_all(config, services=SERVICES, quiet=False):
    for service, base in services.items():
        uri = database_uri(config, service, base)
        if not quiet:
            print("migrating {} database {}".format(service, redact(uri)))
        upgrade(service, uri)


def run_migrations(target_metadata):
    """The body of every service's migrations/env.py (online mode only)."""
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def create_outbox_table_v1(op):
    """The outbox table as of each service's first revision (frozen)."""
    op.create_table(
        "outbox",
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(100), nullable=False),
        Column("body", JSON, nullable=False),
        Column("correlation_id", String(64), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, index=True),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )


def create_inbox_table_v1(op):
    """The processed-events table as of each service's first revision (frozen)."""
    op.create_table(
        "processed_events",
        Column("event_id", String(36), primary_key=True),
        Column("consumer", String(100), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )


def index_inbox_by_processed_at(op):
    """The inbox retention timer deletes by ``processed_at`` (frozen; each service's revision)."""
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])


def drop_inbox_processed_at_index(op):
    op.drop_index("ix_processed_events_processed_at", "processed_events")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Migrate the services' databases to the newest schema.")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("services", nargs="*", metavar="service", help=", ".join(SERVICES))
    args = parser.parse_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error("unknown service(s): {}".format(", ".join(sorted(unknown))))
    chosen = {name: SERVICES[name] for name in (args.services or SERVICES)}
    upgrade_all(load_config(args.config), chosen)


if __name__ == "__main__":
    main()
