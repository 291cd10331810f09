"""Inventory's admin HTTP API under worker_factory (real SQLite, no broker):
the catalogue's writes need a token with the admin scope, verified as orders
verifies them, and the OpenAPI document covers every route."""
import json

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.common.http.auth import TokenVerifier
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.http.front_door import Forbidden, Unauthorized
from services.inventory.openapi import build_spec
from services.inventory.service import InventoryService
from tests.support import http_routes, service_worker, tokens


@pytest.fixture
def inventory(database, outbox):
    service = service_worker(InventoryService, db=database("inventory"), outbox=outbox)
    service.auth = TokenVerifier(tokens.SETTINGS, realm="inventory")
    return service


def request(method="POST", path="/products", payload=None, authorization=None, query=""):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return Request(EnvironBuilder(method=method, path=path, headers=headers, content_type="application/json",
                                  query_string=query, data=json.dumps(payload or {})).get_environ())


ADMIN = "Bearer " + tokens.admin_token()
PRODUCT = {"sku": "B", "name": "Bean", "price": 5, "stock": 2}


def test_catalogue_writes_and_reads_need_the_admin_scope(inventory, outbox):
    calls = (lambda auth: inventory.http_create_product(request(payload=PRODUCT, authorization=auth)),
             lambda auth: inventory.http_update_product(request("PATCH", "/products/B", {"price": 1}, auth), "B"),
             lambda auth: inventory.http_restock(request("POST", "/products/B/restock", {"quantity": 1}, auth),
                                                 "B"),
             lambda auth: inventory.http_list_products(request("GET", "/products", authorization=auth)),
             lambda auth: inventory.http_get_product(request("GET", "/products/B", authorization=auth), "B"))
    for call in calls:
        for authorization in (None, "", "Bearer", "Bearer wrong", "Basic " + tokens.admin_token()):
            with pytest.raises(Unauthorized) as refused:
                call(authorization)
            assert refused.value.headers["WWW-Authenticate"].startswith('Bearer realm="inventory"')
        with pytest.raises(Forbidden) as refused:
            call("Bearer " + tokens.token("ann@example.com"))
        assert refused.value.code == "insufficient_scope"
        assert 'error="insufficient_scope"' in refused.value.headers["WWW-Authenticate"]
    assert inventory.list_products() == []
    assert outbox.events == []


def test_an_admin_creates_changes_and_restocks_a_product(inventory, outbox):
    status, headers, created = inventory.http_create_product(request(payload=PRODUCT, authorization=ADMIN))
    assert (status, created["sku"], created["on_hand"], headers["Location"]) == (201, "B", 2, "/products/B")
    assert inventory.http_get_product(request("GET", "/products/B", authorization=ADMIN), "B") == created
    changed = inventory.http_update_product(request("PATCH", "/products/B", {"price": 7}, ADMIN), "B")
    assert (changed["price"], changed["version"]) == (7, 2)
    restocked = inventory.http_restock(request("POST", "/products/B/restock", {"quantity": 3}, ADMIN), "B")
    assert restocked["on_hand"] == 5
    listed = inventory.http_list_products(request("GET", "/products", authorization=ADMIN))
    assert [product["sku"] for product in listed["products"]] == ["B"]
    assert [event for event, _ in outbox.events] == ["product_changed", "product_changed"]


def test_bad_input_is_a_4xx_naming_the_field_and_nothing_is_written(inventory):
    with pytest.raises(InvalidInput) as bad:
        inventory.http_create_product(request(payload={"sku": "bad sku!", "name": "", "price": -1},
                                              authorization=ADMIN))
    assert set(bad.value.details) == {"sku", "name", "price"}
    with pytest.raises(InvalidInput) as unknown:
        inventory.http_create_product(request(payload=dict(PRODUCT, colour="red"), authorization=ADMIN))
    assert "colour" in unknown.value.details
    with pytest.raises(InvalidInput):
        inventory.http_create_product(request(payload=PRODUCT, authorization=ADMIN, query="x=1"))
    inventory.http_create_product(request(payload=PRODUCT, authorization=ADMIN))
    with pytest.raises(Conflict):
        inventory.http_create_product(request(payload=PRODUCT, authorization=ADMIN))
    with pytest.raises(InvalidInput) as empty:
        inventory.http_update_product(request("PATCH", "/products/B", {}, ADMIN), "B")
    assert "_schema" in empty.value.details
    with pytest.raises(InvalidInput) as quantity:
        inventory.http_restock(request("POST", "/products/B/restock", {"quantity": 0}, ADMIN), "B")
    assert "quantity" in quantity.value.details
    with pytest.raises(NotFound):
        inventory.http_restock(request("POST", "/products/NOPE/restock", {"quantity": 1}, ADMIN), "NOPE")
    with pytest.raises(NotFound):
        inventory.http_get_product(request("GET", "/x", authorization=ADMIN), "not a sku\x00")
    assert inventory.get_product("B")["on_hand"] == 2


def test_the_document_describes_every_route_and_only_those():
    doc = build_spec().to_dict()
    documented = {(method, path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    assert documented == http_routes(InventoryService)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert "405" in operation["responses"], (method, path)
            if path != "/openapi.json":
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(operation["responses"]), (method, path)
    assert doc["components"]["schemas"]["ProductChanges"]["minProperties"] == 1


def test_admin_reads_do_not_wait_for_the_write_lock(inventory, tmp_path):
    """GET routes read in a read-only transaction: a writer holding SQLite's lock does not hold them up."""
    import sqlite3

    import eventlet

    inventory.http_create_product(request(payload=PRODUCT, authorization=ADMIN))
    writer = sqlite3.connect(str(tmp_path / "inventory.sqlite3"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process, mid-write
    try:
        with eventlet.Timeout(3):
            listed = inventory.http_list_products(request("GET", "/products", authorization=ADMIN))
            one = inventory.http_get_product(request("GET", "/products/B", authorization=ADMIN), "B")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert [product["sku"] for product in listed["products"]] == ["B"] and one["sku"] == "B"
