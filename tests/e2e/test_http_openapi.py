"""The OpenAPI document against the live service.

First every route is called with real requests and each real response is
checked against what the document promises for that operation and status;
then schemathesis generates requests from the document (valid and invalid)
and fails on any 5xx or any response the document does not describe.
"""
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import schemathesis

from scripts.seed import DEMO_CATALOGUE
from tests.support import eventually, tokens

ST = os.path.join(os.path.dirname(sys.executable), "st")
# Bounded: a few examples per operation and phase keeps the run well under a minute.
SCHEMATHESIS_MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"))
SCHEMATHESIS_SEED = os.environ.get("SCHEMATHESIS_SEED", "20261125")
CHECKS = os.environ.get("SCHEMATHESIS_CHECKS") or ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "unsupported_method")
# The stateful phase (chains of calls along the document's links) runs on
# SQLite only: PostgreSQL is there for what its column types refuse.
PHASES = {"sqlite": "examples,coverage,fuzzing,stateful", "postgresql": "examples,coverage,fuzzing"}


@pytest.fixture
def api(system):
    system.start("inventory", "orders")
    # the document's examples name the demo catalogue's skus
    system.create_products(("DOC-1", "Documented thing", 250, 100), *DEMO_CATALOGUE)
    yield system
    for service, instance in list(system.processes):  # a throwaway system: no graceful stop needed
        system.kill(service, instance)


def _conforms(spec, method, path_template, response):
    """Validate one real response against the document; return its status.

    A 405 is checked against the 405 documented on the path's first operation
    (the method that got it is, by definition, not documented there).
    """
    item = spec.raw_schema["paths"][path_template]
    if method.lower() not in item:
        assert response.status_code == 405
        method = next(iter(item))
    operation = spec[path_template][method.upper()]
    operation.validate_response(response)
    documented = item[method.lower()]["responses"]
    assert str(response.status_code) in documented, (method, path_template, response.status_code,
                                                      response.text)
    assert response.headers["Content-Type"].startswith("application/json") or response.status_code == 204 \

    return response.status_code


def test_every_route_answers_as_the_document_says(api):
    doc = requests.get(api.url("/openapi.json"), timeout=10).json()
    spec = schemathesis.openapi.from_dict(doc)
    admin = tokens.admin()
    doc_customer = tokens.customer("doc@example.com")
    url = api.url
    seen = []

    def check(method, template, path, expected, **kwargs):
        response = requests.request(method, url(path), timeout=10, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        _conforms(spec, method, template, response)
        seen.append((method.lower(), template, expected))
        return response.json() if response.headers["Content-Type"].startswith("application/json") else None

    order = check("POST", "/orders", "/orders", 202,
                  json={"customer_email": "doc@example.com", "lines": [{"sku": "DOC-1", "quantity": 1}]},
                  headers={"Idempotency-Key": uuid.uuid4().hex, **doc_customer})
    check("POST", "/orders", "/orders", 401, json={"lines": [{"sku": "DOC-1", "quantity": 1}]})
    check("POST", "/orders", "/orders", 403, json={"customer_email": "eve@example.com",
                                                   "lines": [{"sku": "DOC-1", "quantity": 1}]},
          headers=doc_customer)
    check("POST", "/orders", "/orders", 400, json={"customer_email": "x", "lines": []}, headers=admin)
    check("POST", "/orders", "/orders", 415, data="x", headers={"Content-Type": "text/plain", **admin})
    check("POST", "/orders", "/orders", 413, data="[" * 70000, headers={"Content-Type": "application/json"})
    check("GET", "/orders", "/orders?limit=1", 200, headers=doc_customer)
    check("GET", "/orders", "/orders?limit=0", 400, headers=doc_customer)
    check("GET", "/orders", "/orders", 401)
    check("GET", "/orders/{order_id}", "/orders/" + order["id"], 200, headers=doc_customer)
    check("GET", "/orders/{order_id}", "/orders/" + order["id"], 404, headers=tokens.customer("eve@example.com"))
    check("GET", "/orders/{order_id}", "/orders/" + str(uuid.uuid4()), 404, headers=admin)
    check("POST", "/orders/{order_id}/cancel", "/orders/{}/cancel".format(order["id"]), 200,
          json={"reason": "changed my mind"}, headers=doc_customer)
    check("POST", "/orders/{order_id}/cancel", "/orders/{}/cancel".format(order["id"]), 409, headers=admin)
    check("GET", "/products", "/products", 200)
    check("GET", "/products/{sku}", "/products/DOC-1", 200)
    check("GET", "/products/{sku}", "/products/NOPE", 404)
    check("GET", "/health", "/health", 200)
    check("GET", "/ready", "/ready", 200)
    check("GET", "/openapi.json", "/openapi.json", 200)
    check("DELETE", "/orders", "/orders", 405)

    documented = {(method, path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "patch", "put", "delete")}
    assert documented == {(method, template) for method, template, _ in seen if method != "delete"}

    api.stop("inventory")
    check("GET", "/ready", "/ready", 200)  # orders takes orders without inventory
    check("GET", "/products", "/products", 503)


def test_every_route_of_inventory_s_admin_api_answers_as_its_document_says(api):
    """The catalogue's writes, on inventory's own admin API, with the same tokens as orders'."""
    doc = requests.get(api.admin_url("/openapi.json"), timeout=10).json()
    spec = schemathesis.openapi.from_dict(doc)
    admin = tokens.admin()
    customer = tokens.customer("doc@example.com")
    seen = []

    def check(method, template, path, expected, **kwargs):
        response = requests.request(method, api.admin_url(path), timeout=10, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        _conforms(spec, method, template, response)
        seen.append((method.lower(), template, expected))

    check("POST", "/products", "/products", 401, json={"sku": "DOC-2", "name": "n", "price": 1})
    check("POST", "/products", "/products", 403, json={"sku": "DOC-2", "name": "n", "price": 1}, headers=customer)
    check("POST", "/products", "/products", 201, json={"sku": "DOC-2", "name": "Two", "price": 1}, headers=admin)
    check("POST", "/products", "/products", 409, json={"sku": "DOC-2", "name": "Two", "price": 1}, headers=admin)
    check("POST", "/products", "/products", 415, data="x", headers={"Content-Type": "text/plain", **admin})
    check("GET", "/products", "/products", 200, headers=admin)
    check("GET", "/products", "/products", 403, headers=customer)
    check("GET", "/products/{sku}", "/products/DOC-2", 200, headers=admin)
    check("GET", "/products/{sku}", "/products/DOC-9", 404, headers=admin)
    check("PATCH", "/products/{sku}", "/products/DOC-2", 200, json={"price": 5}, headers=admin)
    check("PATCH", "/products/{sku}", "/products/DOC-2", 400, json={}, headers=admin)
    check("POST", "/products/{sku}/restock", "/products/DOC-2/restock", 200, json={"quantity": 3}, headers=admin)
    check("POST", "/products/{sku}/restock", "/products/DOC-9/restock", 404, json={"quantity": 3}, headers=admin)
    check("GET", "/openapi.json", "/openapi.json", 200)
    check("DELETE", "/products", "/products", 405, headers=admin)
    documented = {(method, path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "patch", "put", "delete")}
    assert documented == {(method, template) for method, template, _ in seen if method != "delete"}
    # orders learned of the new product by event (its public catalogue read)
    eventually(lambda: requests.get(api.url("/products/DOC-2"), timeout=10).json().get("price") == 5,
               message="orders' catalogue read shows the change")


@pytest.mark.parametrize("backend,document", [("sqlite", "orders"), ("postgresql", "orders"),
                                              ("sqlite", "inventory")])
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(api, tmp_path, backend, document):
    """Property-based run of the schemathesis CLI (pinned) against the live API (orders', inventory's admin API)."""
    started = time.monotonic()
    url = api.url if document == "orders" else api.admin_url
    result = subprocess.run(
        [ST, "run", url("/openapi.json"),
         "--checks", CHECKS,
         "--phases", os.environ.get("SCHEMATHESIS_PHASES") or PHASES[backend],
         "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES),
         "--seed", SCHEMATHESIS_SEED,
         # One worker: CPython 3.11's AST constructor keeps its recursion depth in
         # interpreter-wide state, so hypothesis parsing lambdas in two threads at
         # once can fail the run with "AST constructor recursion depth mismatch".
         "--workers", "1",
         "--request-timeout", "10",
         "--header", "Authorization: Bearer " + tokens.admin_token(),
         "--no-color"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=170)
    elapsed = time.monotonic() - started
    print(result.stdout[-6000:], result.stderr[-2000:], "took {:.1f}s".format(elapsed))
    assert result.returncode == 0, result.stdout[-12000:]
