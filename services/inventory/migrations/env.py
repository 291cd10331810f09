from services.common.db.migrate import run_migrations
from services.inventory.models import InventoryBase

run_migrations(InventoryBase.metadata)
