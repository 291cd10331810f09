"""Service logic under nameko's worker_factory: a real SQLite file, no broker."""
import pytest
from nameko_sqlalchemy.database import DatabaseWrapper, Session
from sqlalchemy.orm import sessionmaker

from services.common.db.database import make_engine
from services.common.db.migrate import upgrade


class RecordingOutbox:
    """Stands in for the outbox: remembers events instead of publishing them."""

    def __init__(self):
        self.events = []

    def add(self, session, event_type, data):
        self.events.append((event_type, data))

    def types(self):
        return [event_type for event_type, _ in self.events]


@pytest.fixture
def database(tmp_path):
    def make(service):
        uri = "sqlite:///{}".format(tmp_path / "{}.sqlite3".format(service))
        upgrade(service, uri)
        engine = make_engine(uri)
        return DatabaseWrapper(sessionmaker(bind=engine, class_=Session, expire_on_commit=False))
    return make


@pytest.fixture
def outbox():
    return RecordingOutbox()
