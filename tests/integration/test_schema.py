"""Each service's migrations build exactly the schema its models describe, on both databases.

Models and migrations are written by hand, side by side; a column, index or
constraint added to one and not the other would otherwise surface only on a
database that was migrated rather than created from the models.
"""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.common.db.database import make_engine
from services.inventory.models import InventoryBase
from services.notifications.models import NotificationsBase
from services.orders.models import OrdersBase


@pytest.mark.parametrize("service, base", [
    ("orders", OrdersBase), ("inventory", InventoryBase), ("notifications", NotificationsBase)])
def test_migrations_and_models_agree(make_database, backend, service, base):
    engine = make_engine(make_database(service, backend))
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), base.metadata)
    finally:
        engine.dispose()
    assert differences == []
