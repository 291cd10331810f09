"""The order saga on the real broker and both databases, services in-process."""
import json
import logging
import re

import requests
from sqlalchemy import text

from services.common.db.database import make_engine

from services.common.messaging.outbox import Outbox
from tests.support import eventually, tokens


def url(config, path):
    return "http://{}{}".format(config["WEB_SERVER_ADDRESS"], path)


def place(config, email, *lines):
    response = requests.post(url(config, "/orders"), timeout=10, headers=tokens.customer(email), json={
        "customer_email": email, "lines": [{"sku": sku, "quantity": qty} for sku, qty in lines]})
    assert response.status_code == 202, response.text
    return response.json()


def settled(rpc, order_id):
    order = rpc.orders.get_order(order_id)
    return order if order["status"] != "pending" else None


def known_to_orders(rpc, *skus):
    return eventually(lambda: set(skus) <= {item["sku"] for item in rpc.orders.list_catalogue()},
                      message="catalogue copy")


def test_confirm_then_cancel_returns_the_stock_and_tells_the_customer(running, rpc, service_config):
    rpc.inventory.create_product("S-1", "Sock", 300, 4)
    known_to_orders(rpc, "S-1")
    order = place(service_config, "sue@example.com", ("S-1", 3))
    assert eventually(lambda: settled(rpc, order["id"]))["status"] == "confirmed"
    assert rpc.inventory.get_stock("S-1")["available"] == 1

    sue = tokens.customer("sue@example.com")
    response = requests.post(url(service_config, "/orders/{}/cancel".format(order["id"])), timeout=10,
                             headers=sue)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    eventually(lambda: rpc.inventory.get_stock("S-1")["reserved"] == 0, message="stock released")

    again = requests.post(url(service_config, "/orders/{}/cancel".format(order["id"])), timeout=10,
                          headers=sue)
    assert again.status_code == 409
    assert again.json()["details"] == {"status": ["cancelled"]}
    notes = eventually(lambda: len(rpc.notifications.list_notifications(order_id=order["id"])) == 2
                       and rpc.notifications.list_notifications(order_id=order["id"]))
    assert [note["event_type"] for note in notes] == ["order_confirmed", "order_cancelled"]
    assert rpc.inventory.get_stock("S-1") == {"sku": "S-1", "on_hand": 4, "reserved": 0, "available": 4}


def test_events_lost_between_commit_and_publish_are_sent_by_the_relay(
        runner_factory, service_config, rpc, monkeypatch):
    from tests.integration.conftest import ALL_SERVICES
    # A crash between commit and publish: committed outbox rows never reach
    # the in-process publisher, so only the relay can send them.
    monkeypatch.setattr(Outbox, "_committed", lambda self, message: None)
    runner = runner_factory(service_config, *ALL_SERVICES)
    runner.start()
    rpc.inventory.create_product("R-1", "Rope", 900, 2)
    known_to_orders(rpc, "R-1")
    order = place(service_config, "rob@example.com", ("R-1", 2))
    assert eventually(lambda: settled(rpc, order["id"]))["status"] == "confirmed"
    eventually(lambda: rpc.notifications.list_notifications(order_id=order["id"]), message="notification")
    assert rpc.inventory.get_stock("R-1")["reserved"] == 2


def outbox_bodies(config, service, base):
    engine = make_engine(config["DB_URIS"]["{}:{}".format(service, base)])
    try:
        with engine.connect() as connection:
            return [row.body if isinstance(row.body, dict) else json.loads(row.body)
                    for row in connection.execute(text("SELECT body FROM outbox ORDER BY id"))]
    finally:
        engine.dispose()


# which consumers (their inbox names) handle each event type
CONSUMERS = {
    "product_changed": ["update_catalogue"], "order_created": ["reserve_stock"],
    "stock_reserved": ["confirm_order"], "stock_rejected": ["reject_order"],
    "order_confirmed": ["notify"], "order_rejected": ["notify"],
    "order_cancelled": ["release_stock", "notify"], "stock_released": [],
}


class SkippedDeliveries(logging.Handler):
    """The (consumer, event id) pairs whose delivery a consumer recognised and skipped."""

    PATTERN = re.compile(r"^(\w+): event (\S+) \(\w+\) already handled; skipped$")

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen = set()

    def emit(self, record):
        found = self.PATTERN.match(record.getMessage())
        if found:
            self.seen.add(found.groups())


def test_every_event_type_delivered_twice_changes_nothing_the_second_time(
        running, rpc, service_config, publish_raw):
    rpc.inventory.create_product("D-1", "Dice", 100, 10)
    known_to_orders(rpc, "D-1")
    kept = place(service_config, "dan@example.com", ("D-1", 4))
    refused = place(service_config, "dan@example.com", ("D-1", 7))
    assert eventually(lambda: settled(rpc, kept["id"]))["status"] == "confirmed"
    assert eventually(lambda: settled(rpc, refused["id"]))["status"] == "rejected"
    cancel = requests.post(url(service_config, "/orders/{}/cancel".format(kept["id"])), timeout=10,
                           headers=tokens.customer("dan@example.com"))
    assert cancel.status_code == 200
    eventually(lambda: rpc.inventory.get_stock("D-1")["reserved"] == 0, message="released")
    eventually(lambda: len(rpc.notifications.list_notifications(recipient="dan@example.com")) == 3,
               message="three notifications")

    sent = outbox_bodies(service_config, "orders", "OrdersBase") + \
        outbox_bodies(service_config, "inventory", "InventoryBase")
    assert {body["type"] for body in sent} == {
        "product_changed", "order_created", "stock_reserved", "stock_rejected", "order_confirmed",
        "order_rejected", "order_cancelled", "stock_released"}
    expected = {(consumer, body["id"]) for body in sent for consumer in CONSUMERS[body["type"]]}
    skipped = SkippedDeliveries()
    consumers_log = logging.getLogger("services.common.messaging.consumers")
    level = consumers_log.level
    consumers_log.addHandler(skipped)
    consumers_log.setLevel(logging.INFO)
    try:
        for body in sent:  # the whole conversation again, same event ids
            publish_raw(body["source"], body["type"], body)
        # evidence that every redelivered message reached its consumers and was
        # recognised; a wrongful second effect would have been applied instead
        eventually(lambda: expected <= skipped.seen, timeout=30,
                   message="every redelivery consumed and skipped")
    finally:
        consumers_log.removeHandler(skipped)
        consumers_log.setLevel(level)

    def recorded_once():
        engine = make_engine(service_config["DB_URIS"]["orders:OrdersBase"])
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM processed_events")).scalar()
        engine.dispose()
        return count
    assert recorded_once() == 3  # confirm, reject, catalogue: each recorded once

    assert rpc.inventory.get_stock("D-1") == {"sku": "D-1", "on_hand": 10, "reserved": 0, "available": 10}
    assert [change["to"] for change in rpc.orders.get_order(kept["id"])["history"]] == [
        "pending", "confirmed", "cancelled"]
    assert [change["to"] for change in rpc.orders.get_order(refused["id"])["history"]] == [
        "pending", "rejected"]
    notes = rpc.notifications.list_notifications(recipient="dan@example.com")
    assert sorted(note["event_type"] for note in notes) == [
        "order_cancelled", "order_confirmed", "order_rejected"]
    assert len(outbox_bodies(service_config, "orders", "OrdersBase")) == 5
