"""One orders "process" for the SQLite race test: run as a separate OS process.

``python -m tests.support.sqlite_race URI ROLE ORDER_ID [PAUSE_DIR]`` uses the orders
service's own code (``change_status``, ``confirm_order``) on the engine
``services.common.db.database`` builds, as a second ``nameko run`` process would. With
PAUSE_DIR, the cancel stops after it has read the order and before it writes
(it touches PAUSE_DIR/read and waits for PAUSE_DIR/go), so a test can run the
other process inside that window every time instead of hoping for it.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tests.support import service_worker  # noqa: E402
from nameko_sqlalchemy.database import DatabaseWrapper, Session  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from services.common.db.database import make_engine  # noqa: E402
from services.common.messaging.events import new_event  # noqa: E402
from services.orders import domain, handlers  # noqa: E402
from services.orders.models import CatalogueItem  # noqa: E402
from services.orders.service import OrdersService  # noqa: E402


class Outbox:
    """The outbox row is not what this race is about: events are only counted."""

    def __init__(self):
        self.events = []

    def add(self, session, event_type, data):
        self.events.append(event_type)


def main(uri, role, order_id=None, pause_dir=None):
    engine = make_engine(uri)
    db = DatabaseWrapper(sessionmaker(bind=engine, class_=Session, expire_on_commit=False))
    worker = service_worker(OrdersService, db=db, outbox=Outbox(), config={}, correlation_id=None)
    if role == "place":
        with db.get_session() as session:
            session.execute(insert(CatalogueItem).values(sku="RACE-1", name="Race", price=100, active=True,
                                                         version=1))
        order = worker.create_order("race@example.com", [{"sku": "RACE-1", "quantity": 1}])
        print(json.dumps({"id": order["id"]}))
        return
    if role == "cancel":
        if pause_dir:
            real = domain.transition

            def paused(current, target):
                open(os.path.join(pause_dir, "read"), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(pause_dir, "go")) and time.monotonic() < deadline:
                    eventlet.sleep(0.02)
                return real(current, target)

            domain.transition = paused
        with worker.uow as uow:
            order = handlers.change_status(uow, order_id, domain.CANCELLED, "race")
    elif role == "confirm":
        body = new_event("inventory", "stock_reserved", {"order_id": order_id})
        worker.confirm_order(body)
        order = worker.get_order(order_id)
    else:
        raise SystemExit("unknown role {}".format(role))
    print(json.dumps({"status": order["status"]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
