"""The unit of work: one transaction, the inbox check before the handler, hooks after the outcome."""
import pytest
from sqlalchemy.exc import OperationalError

from services.common.db.database import ServiceDatabase
from services.common.messaging.events import MalformedMessage, new_event
from services.common.messaging.outbox import Outbox
from services.common.uow import NoOutbox, ReadOnly, UnitOfWork, handles
from services.inventory import events
from services.inventory.models import InventoryBase, OutboxMessage, ProcessedEvent, Reservation
from services.inventory.schemas import OrderCancelledSchema
from tests.support import service_worker


class Recorder:
    name = "recorder"
    db = ServiceDatabase(InventoryBase)
    outbox = Outbox(InventoryBase, OutboxMessage)
    uow = UnitOfWork(ProcessedEvent)

    def __init__(self):
        self.calls = []

    @handles("orders", "order_cancelled", OrderCancelledSchema())
    def tombstone(self, uow, event):
        self.calls.append(event.data["order_id"])
        uow.session.add(Reservation(order_id=event.data["order_id"], lines={}, status="cancelled"))
        uow.after_commit(lambda: self.calls.append("committed"))
        uow.after_rollback(lambda: self.calls.append("rolled back"))
        if event.data["order_id"] == "boom":
            raise RuntimeError("effect failed")


@pytest.fixture
def recorder(database, outbox):
    return service_worker(Recorder, db=database("inventory"), outbox=outbox)


def stored(recorder, order_id):
    with recorder.uow as uow:
        return uow.session.get(Reservation, order_id) is not None


def test_a_redelivered_event_never_reaches_the_handler(recorder):
    event = new_event("orders", "order_cancelled", {"order_id": "o-1"})
    recorder.tombstone(event)
    recorder.tombstone(event)
    assert recorder.calls == ["o-1", "committed"]
    assert stored(recorder, "o-1")


def test_a_failing_effect_rolls_back_the_inbox_entry_too_so_a_retry_applies_it(recorder):
    event = new_event("orders", "order_cancelled", {"order_id": "boom"})
    with pytest.raises(RuntimeError):
        recorder.tombstone(event)
    assert recorder.calls == ["boom", "rolled back"]
    assert not stored(recorder, "boom")
    with pytest.raises(RuntimeError):
        recorder.tombstone(event)  # not recorded as handled: the handler runs again
    assert recorder.calls.count("boom") == 2


def test_a_malformed_event_is_refused_before_any_transaction(recorder):
    with pytest.raises(MalformedMessage):
        recorder.tombstone(new_event("orders", "order_cancelled", {"id": "no order_id"}))
    assert recorder.calls == []


def test_publish_dumps_through_the_declaration_and_needs_an_outbox(recorder, outbox):
    with recorder.uow as uow:
        uow.publish(events.STOCK_RELEASED, {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 1}], "extra": 1})
    assert outbox.events == [("stock_released", {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 1}]})]
    recorder.uow._outbox_attr = None
    with pytest.raises(NoOutbox), recorder.uow as uow:
        uow.publish(events.STOCK_RELEASED, {"order_id": "o-1", "lines": []})


def test_a_unit_of_work_is_not_reentrant(recorder):
    with recorder.uow, pytest.raises(RuntimeError):
        with recorder.uow:
            pass


def test_a_read_only_unit_of_work_reads_and_refuses_to_write(recorder, outbox):
    recorder.tombstone(new_event("orders", "order_cancelled", {"order_id": "o-1"}))
    with recorder.uow.read_only() as uow:
        assert uow.is_read_only
        assert uow.session.get(Reservation, "o-1") is not None
    with pytest.raises(ReadOnly), recorder.uow.read_only() as uow:
        uow.publish(events.STOCK_RELEASED, {"order_id": "o-1", "lines": []})
    with pytest.raises(ReadOnly), recorder.uow.read_only() as uow:
        uow.first_delivery(new_event("orders", "order_cancelled", {"order_id": "o-2"}), "tombstone")
    assert outbox.events == []
    # a write the unit of work cannot see (a plain statement) is refused by SQLite itself
    with pytest.raises(OperationalError, match="readonly"), recorder.uow.read_only() as uow:
        uow.session.add(Reservation(order_id="o-3", lines={}, status="cancelled"))
        uow.session.flush()
    assert not stored(recorder, "o-3")
    # only the next ``with`` is read-only
    with recorder.uow as uow:
        assert not uow.is_read_only
        uow.session.add(Reservation(order_id="o-4", lines={}, status="cancelled"))
    assert stored(recorder, "o-4")


def test_rollback_hooks_know_whether_the_commit_itself_failed(recorder):
    """A failed COMMIT may have been applied by the server all the same: its hooks are told so."""
    seen = []
    with pytest.raises(RuntimeError), recorder.uow as uow:
        uow.after_rollback(lambda: seen.append(("effect failed", uow.commit_failed)))
        raise RuntimeError("effect failed")

    def lost(*args, **kwargs):
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))
    with pytest.raises(OperationalError), recorder.uow as uow:
        uow.after_rollback(lambda: seen.append(("commit failed", uow.commit_failed)))
        uow.session.commit = lost
    with recorder.uow as uow:
        uow.after_commit(lambda: seen.append(("committed", uow.commit_failed)))
    assert seen == [("effect failed", False), ("commit failed", True), ("committed", False)]
