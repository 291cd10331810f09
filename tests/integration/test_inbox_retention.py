"""Inbox entries are forgotten once no redelivery can need them, and only those."""
from datetime import timedelta

import pytest
from nameko_sqlalchemy.database import DatabaseWrapper, Session
from sqlalchemy import insert, select
from sqlalchemy.orm import sessionmaker

from services.common.messaging import consumers
from services.common.db.database import make_engine
from services.common.messaging.events import utcnow
from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders.service import OrdersService
from tests.support import service_worker


@pytest.mark.parametrize("service_class", [OrdersService, InventoryService, NotificationsService])
def test_entries_older_than_the_retention_are_forgotten_in_batches(
        make_database, backend, service_class, monkeypatch):
    monkeypatch.setattr(consumers, "INBOX_PURGE_BATCH", 2)  # five old rows: three batches
    engine = make_engine(make_database(service_class.name, backend))
    table = service_class.inbox.__table__
    now = utcnow()
    old = [{"event_id": "old-{}".format(n), "consumer": "c", "processed_at": now - timedelta(days=8)}
           for n in range(5)]
    recent = [{"event_id": "recent", "consumer": "c", "processed_at": now - timedelta(days=6)},
              {"event_id": "old-0", "consumer": "other", "processed_at": now}]  # same event, other consumer
    try:
        with engine.begin() as connection:
            connection.execute(insert(table), old + recent)
        service = service_worker(
            service_class, config={"INBOX_RETENTION_DAYS": 7},
            db=DatabaseWrapper(sessionmaker(bind=engine, class_=Session, expire_on_commit=False)))

        assert service.forget_old_inbox_entries() == 5
        with engine.connect() as connection:
            kept = set(connection.execute(select(table.c.event_id, table.c.consumer)).all())
        assert kept == {("recent", "c"), ("old-0", "other")}
        assert service.forget_old_inbox_entries() == 0
    finally:
        engine.dispose()
