"""Client input that used to end in a 500, a 502, an untyped RPC error or a
half-done write (issue 11, item 4), on the real broker, SQLite and PostgreSQL.

Each test throws several members of one kind at both doors (HTTP and RPC)
and checks the answer names the field and that nothing was stored.
"""
import base64
import json
import uuid

import pytest
import requests

from services.common.errors import InvalidInput, NotFound
from services.common.validation import MAX_STOCK
from tests.integration.conftest import ALL_SERVICES
from tests.support import eventually, tokens

ADMIN = tokens.admin()


@pytest.fixture
def system(runner_factory, service_config):
    runner = runner_factory(service_config, *ALL_SERVICES)
    runner.start()
    return service_config


def send_json(method, address, body, **kwargs):
    """``body`` as JSON with ``\\uXXXX`` escapes: how a client sends an unpaired surrogate."""
    headers = dict(ADMIN, **kwargs.pop("headers", {}), **{"Content-Type": "application/json"})
    return requests.request(method, address, data=json.dumps(body).encode("ascii"), headers=headers,
                            timeout=10, **kwargs)


def url(config, path):
    return "http://{}{}".format(config["WEB_SERVER_ADDRESS"], path)


def admin_url(config, path):
    """Inventory's admin API (catalogue writes)."""
    return "http://{}{}".format(config["INVENTORY_WEB_SERVER_ADDRESS"], path)


def cursor_of(value):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_CURSORS = [
    cursor_of(["0001-01-01T00:00:00+01:00", "x"]),   # no UTC equivalent
    cursor_of(["9999-12-31T23:59:59-01:00", "x"]),   # past datetime.max in UTC
    cursor_of(["2026-01-01T00:00:00+00:00", "a\u0000b"]),  # NUL: PostgreSQL refuses it
    cursor_of(["2026-01-01T00:00:00+00:00", 5]),
    cursor_of([1, 2]),
    cursor_of({"a": 1}),
    cursor_of(b"\xff\xfe\x00"),
    "!!!not-base64",
    "%00",
    "A" * 5000,
]


def test_a_forged_cursor_is_a_400_naming_cursor(system):
    for cursor in FORGED_CURSORS:
        response = requests.get(url(system, "/orders"), params={"cursor": cursor}, headers=ADMIN, timeout=10)
        assert response.status_code == 400, (cursor, response.text)
        assert "cursor" in response.json()["details"]


def test_a_sku_with_a_trailing_newline_is_refused_and_nothing_is_stored(system, rpc):
    for sku in ["NL-1\n", "NL-2\r\n", "NL-3\x00"]:
        response = requests.post(admin_url(system, "/products"), headers=ADMIN, timeout=10,
                                 json={"sku": sku, "name": "Newline", "price": 100})
        assert response.status_code == 400, response.text
        assert "sku" in response.json()["details"]
        with pytest.raises(InvalidInput) as refused:
            rpc.inventory.create_product(sku, "Newline", 100, 1)
        assert "sku" in refused.value.details
    assert rpc.inventory.list_products() == []


def test_unstorable_text_is_refused_at_the_edge_over_http_and_rpc(system, rpc):
    rpc.inventory.create_product("U-1", "Umbrella", 500, 5)
    eventually(lambda: rpc.orders.list_catalogue(), message="catalogue copy")
    for bad in ["a\x00b", "\ud800", "x\udfff"]:
        response = send_json("POST", admin_url(system, "/products"), {"sku": "U-2", "name": bad, "price": 100},
                             headers=ADMIN)
        assert response.status_code == 400 and "name" in response.json()["details"], response.text
        response = send_json("PATCH", admin_url(system, "/products/U-1"), {"name": bad}, headers=ADMIN)
        assert response.status_code == 400 and "name" in response.json()["details"], response.text
        with pytest.raises(InvalidInput) as refused:
            rpc.inventory.update_product("U-1", name=bad)
        assert "name" in refused.value.details
        response = send_json("POST", url(system, "/orders"), {
            "customer_email": "ann{}@example.com".format(bad), "lines": [{"sku": "U-1", "quantity": 1}]})
        assert response.status_code == 400 and "customer_email" in response.json()["details"], response.text
        # a query string arrives as UTF-8 (werkzeug replaces what is not): only NUL gets through
        response = requests.get(url(system, "/orders") + "?customer_email=a%00b@example.com", headers=ADMIN, timeout=10)
        assert response.status_code == 400 and "customer_email" in response.json()["details"], response.text
        with pytest.raises(NotFound):
            rpc.orders.get_order(bad)
        with pytest.raises(NotFound):
            rpc.orders.cancel_order(bad)
        with pytest.raises(NotFound):
            rpc.inventory.get_product(bad)
        with pytest.raises(InvalidInput):
            rpc.inventory.get_reservation(bad)
        with pytest.raises(InvalidInput):
            rpc.notifications.list_notifications(order_id=bad)
        with pytest.raises(InvalidInput):
            rpc.notifications.list_notifications(recipient=bad)
    response = requests.post(url(system, "/orders"), headers=ADMIN, timeout=10, json={
        "customer_email": "ann@example.com", "lines": [{"sku": "U-1", "quantity": 1}]})
    assert response.status_code == 202
    order_id = response.json()["id"]
    for bad in ["a\x00b", "\ud800"]:
        response = send_json("POST", url(system, "/orders/{}/cancel".format(order_id)), {"reason": bad})
        assert response.status_code == 400 and "reason" in response.json()["details"], response.text
        with pytest.raises(InvalidInput) as refused:
            rpc.orders.cancel_order(order_id, bad)
        assert "reason" in refused.value.details
    with pytest.raises(InvalidInput):
        rpc.orders.cancel_order(order_id, "x" * 201)  # the column's length, as over HTTP
    assert rpc.orders.get_order(order_id)["status"] != "cancelled"
    assert rpc.inventory.get_product("U-1")["name"] == "Umbrella"


def test_integers_past_a_column_are_typed_errors_with_the_same_limits_as_http(system, rpc):
    for price in [2 ** 31, 10 ** 30, -1]:
        with pytest.raises(InvalidInput) as refused:
            rpc.inventory.create_product("I-1", "Ink", price, 1)
        assert "price" in refused.value.details
    with pytest.raises(InvalidInput) as refused:
        rpc.inventory.create_product("I-1", "Ink", 100, MAX_STOCK + 1)
    assert "stock" in refused.value.details
    rpc.inventory.create_product("I-1", "Ink", 100, MAX_STOCK - 10)
    for quantity in [2 ** 31, 10 ** 30, 0, -5]:
        with pytest.raises(InvalidInput) as refused:
            rpc.inventory.restock("I-1", quantity)
        assert "quantity" in refused.value.details
        assert "SQL" not in str(refused.value) and "INSERT" not in str(refused.value)
    # the sum passes the range: refused over RPC and HTTP alike, stock unchanged
    with pytest.raises(InvalidInput) as refused:
        rpc.inventory.restock("I-1", 11)
    assert "quantity" in refused.value.details
    response = requests.post(admin_url(system, "/products/I-1/restock"), headers=ADMIN, timeout=10,
                             json={"quantity": 11})
    assert response.status_code == 400, response.text
    assert "quantity" in response.json()["details"]
    assert rpc.inventory.get_stock("I-1")["on_hand"] == MAX_STOCK - 10
    rpc.inventory.restock("I-1", 10)
    assert rpc.inventory.get_stock("I-1")["on_hand"] == MAX_STOCK
    for notification_id in [2 ** 31, 10 ** 30]:
        with pytest.raises(InvalidInput):
            rpc.notifications.get_notification(notification_id)


def test_emails_one_rule_idna_domains_ascii_local_parts_any_case(system, rpc):
    rpc.inventory.create_product("E-1", "Envelope", 100, 50)
    eventually(lambda: rpc.orders.list_catalogue(), message="catalogue copy")

    def place(email):
        return requests.post(url(system, "/orders"), headers=ADMIN, timeout=10, json={
            "customer_email": email, "lines": [{"sku": "E-1", "quantity": 1}]})

    accepted = place("ann@bücher.example")
    assert accepted.status_code == 202, accepted.text
    for refused in ["jürgen@example.com", "ann@bü cher.example", "ann@-x.example", "ann@" + "x" * 250 + ".com"]:
        response = place(refused)
        assert response.status_code == 400, (refused, response.text)
        assert "customer_email" in response.json()["details"]
    with pytest.raises(InvalidInput) as wrong:
        rpc.orders.create_order("jürgen@example.com", [{"sku": "E-1", "quantity": 1}])
    assert "customer_email" in wrong.value.details

    placed = place("Bob.Case@Example.COM")
    assert placed.status_code == 202, placed.text
    found = requests.get(url(system, "/orders"), params={"customer_email": "bob.case@example.com"}, headers=ADMIN, timeout=10)
    assert [order["id"] for order in found.json()["orders"]] == [placed.json()["id"]]
    also = requests.get(url(system, "/orders"), params={"customer_email": "BOB.CASE@example.com"}, headers=ADMIN, timeout=10)
    assert [order["id"] for order in also.json()["orders"]] == [placed.json()["id"]]
    assert [o["id"] for o in rpc.orders.list_orders(customer_email="Bob.Case@EXAMPLE.com")] == [placed.json()["id"]]
    # notifications keys and lists by the same form
    eventually(lambda: rpc.notifications.list_notifications(recipient="BOB.case@example.com"),
               message="notification for Bob, found case-insensitively")


def test_an_order_id_that_is_not_a_uuid_is_not_found_over_rpc_as_over_http(system, rpc):
    for order_id in [5, None, ["x"], {"a": 1}, "x" * 10000, str(uuid.uuid4()) + "\n"]:
        with pytest.raises(NotFound):
            rpc.orders.get_order(order_id)
        with pytest.raises(NotFound):
            rpc.orders.cancel_order(order_id)
