from services.common.db.migrate import run_migrations
from services.orders.models import OrdersBase

run_migrations(OrdersBase.metadata)
