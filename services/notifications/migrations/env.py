from services.common.db.migrate import run_migrations
from services.notifications.models import NotificationsBase

run_migrations(NotificationsBase.metadata)
