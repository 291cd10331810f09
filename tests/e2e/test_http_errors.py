"""Every class of client mistake gets its status and the one JSON error shape,
against the real service; none gets a 500 or a traceback."""
import json
import uuid

import pytest
import requests

from tests.support import tokens

# an operator may place orders for any customer_email the test bodies name
ADMIN = tokens.admin()


@pytest.fixture
def api(system):
    """Orders and inventory (notifications play no part); killed at the end,
    which is safe for a throwaway system and saves the graceful stop's seconds."""
    system.start("inventory", "orders")
    system.create_products(("ERR-1", "Thing", 500, 10))
    yield system
    for service, instance in list(system.processes):
        system.kill(service, instance)


def assert_error(response, status, code, *fields):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.text
    for field in fields:
        assert field in body["details"], body
    assert response.headers["X-Request-ID"]
    return body


def post(api, path, body, **kwargs):
    headers = {"Content-Type": "application/json", **ADMIN}
    headers.update(kwargs.pop("headers", {}))
    return requests.post(api.url(path), data=body, headers=headers, timeout=10, **kwargs)


def test_malformed_json_is_400(api):
    for body in ('{"customer_email": ', "[" * 50000, '{"a": NaN', b"\xff\xfe"):
        assert_error(post(api, "/orders", body), 400, "malformed_json", "_body")


def test_schema_violations_are_400_naming_each_field(api):
    body = {"customer_email": "not-an-email", "colour": "red",
            "lines": [{"sku": "ERR-1", "quantity": 0}, {"sku": "bad sku!", "quantity": "2"}]}
    error = assert_error(post(api, "/orders", json.dumps(body)), 400, "invalid_input",
                         "customer_email", "colour", "lines")
    assert set(error["details"]["lines"]) == {"0", "1"}
    assert "quantity" in error["details"]["lines"]["0"]
    assert set(error["details"]["lines"]["1"]) == {"sku", "quantity"}

    too_many = {"customer_email": "a@example.com", "lines": [{"sku": "ERR-1", "quantity": 1001}]}
    assert_error(post(api, "/orders", json.dumps(too_many)), 400, "invalid_input", "lines")
    repeated = {"customer_email": "a@example.com",
                "lines": [{"sku": "ERR-1", "quantity": 1}, {"sku": "ERR-1", "quantity": 2}]}
    error = assert_error(post(api, "/orders", json.dumps(repeated)), 400, "invalid_input", "lines")
    assert "repeated: ERR-1" in json.dumps(error["details"])
    assert_error(post(api, "/orders", "[]"), 400, "invalid_input", "_body")
    assert_error(post(api, "/orders", ""), 400, "invalid_input", "_body")
    assert_error(requests.get(api.url("/orders?limit=101&sort=asc"), headers=ADMIN, timeout=10), 400, "invalid_input",
                 "limit", "sort")
    assert_error(requests.get(api.url("/orders?cursor=bm90LWEtY3Vyc29y"), headers=ADMIN, timeout=10), 400,
                 "invalid_input", "cursor")
    assert_error(post(api, "/orders", json.dumps({"customer_email": "a@example.com", "lines": [
        {"sku": "ERR-1", "quantity": 1}]}), headers={"Idempotency-Key": "k" * 256}), 400,
        "invalid_input", "Idempotency-Key")
    # nothing of it was stored
    assert requests.get(api.url("/orders"), headers=ADMIN, timeout=10).json()["orders"] == []


def test_unknown_route_is_404_and_unknown_ids_too(api):
    assert_error(requests.get(api.url("/nowhere"), timeout=10), 404, "not_found", "path")
    assert_error(requests.get(api.url("/orders/{}".format(uuid.uuid4())), headers=ADMIN, timeout=10),
                 404, "not_found")
    assert_error(requests.get(api.url("/orders/not-an-id%00"), headers=ADMIN, timeout=10), 404, "not_found",
                 "order_id")
    assert_error(requests.get(api.url("/products/NOPE"), timeout=10), 404, "not_found", "sku")
    assert_error(requests.get(api.url("/products/" + "x" * 500), timeout=10), 404, "not_found", "sku")


def test_wrong_method_is_405_with_allow(api):
    response = requests.delete(api.url("/orders"), timeout=10)
    assert_error(response, 405, "method_not_allowed", "method")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert_error(requests.put(api.url("/products/ERR-1"), json={}, timeout=10), 405, "method_not_allowed")


def test_conflict_is_409(api):
    placed = api.place_order("c@example.com", [("ERR-1", 1)]).json()
    cancel = api.url("/orders/{}/cancel".format(placed["id"]))
    assert requests.post(cancel, headers=ADMIN, timeout=10).json()["status"] == "cancelled"
    error = assert_error(requests.post(cancel, headers=ADMIN, timeout=10), 409, "conflict", "status")
    assert error["details"]["status"] == ["cancelled"]


def test_body_over_the_limit_is_413(api):
    big = json.dumps({"customer_email": "a@example.com",
                      "lines": [{"sku": "ERR-1", "quantity": 1}], "pad": "x" * 70000})
    assert_error(post(api, "/orders", big), 413, "payload_too_large", "_body")
    assert_error(post(api, "/nowhere", big), 413, "payload_too_large")


def test_unsupported_content_type_is_415(api):
    body = json.dumps({"customer_email": "a@example.com", "lines": [{"sku": "ERR-1", "quantity": 1}]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        assert_error(post(api, "/orders", body, headers={"Content-Type": content_type}), 415,
                     "unsupported_media_type", "Content-Type")
    # a JSON variant is accepted
    assert post(api, "/orders", body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 202


def test_a_needed_service_not_answering_is_503_and_orders_stays_ready(api):
    api.stop("inventory")
    error = assert_error(requests.get(api.url("/products"), timeout=10), 503, "service_unavailable", "service")
    assert error["details"]["service"] == "inventory"
    # orders takes orders without inventory: its outage must not take orders
    # out of a load balancer
    ready = requests.get(api.url("/ready"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"broker": "ok", "database": "ok"}}
    # the orders that need no other service still work
    assert requests.get(api.url("/health"), timeout=10).status_code == 200
    assert api.place_order("d@example.com", [("ERR-1", 1)]).status_code == 202


def test_ready_when_everything_answers(api):
    response = requests.get(api.url("/ready"), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"broker": "ok", "database": "ok"}}
