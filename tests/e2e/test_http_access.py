"""Who may do what: admin-only catalogue writes behind a Bearer token, open
customer routes, and CORS for browsers on configured origins only."""
import requests

from tests.helpers import eventually

TOKEN = "s3cret-admin-token"
WRITES = (("POST", "/products", {"sku": "NEW-1", "name": "New", "price": 100}),
          ("POST", "/products/ACC-1/restock", {"quantity": 5}),
          ("PATCH", "/products/ACC-1", {"price": 999}))


def start(system, **env):
    system.env.update(env)
    system.start("inventory", "orders")
    system.create_products(("ACC-1", "Thing", 100, 10))
    return system


def stop(system):
    for service, instance in list(system.processes):  # a throwaway system: no graceful stop needed
        system.kill(service, instance)


def call(system, method, path, body=None, token=None, scheme="Bearer"):
    headers = {"Authorization": "{} {}".format(scheme, token)} if token is not None else {}
    return requests.request(method, system.url(path), json=body, headers=headers, timeout=10)


def test_without_a_configured_token_writes_are_forbidden(system):
    start(system, ADMIN_TOKEN="")
    for method, path, body in WRITES:
        for token in (None, "", "anything"):
            response = call(system, method, path, body, token)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "forbidden"
    with system.rpc() as rpc:
        assert [product["sku"] for product in rpc.inventory.list_products()] == ["ACC-1"]
    stop(system)


def test_missing_or_wrong_token_is_401_and_changes_nothing(system):
    start(system, ADMIN_TOKEN=TOKEN)
    for method, path, body in WRITES:
        for token, scheme in ((None, "Bearer"), ("wrong", "Bearer"), (TOKEN + "x", "Bearer"),
                              (TOKEN[:-1], "Bearer"), (TOKEN, "Basic"), ("", "Bearer")):
            response = call(system, method, path, body, token, scheme)
            assert response.status_code == 401, (method, path, token, scheme, response.text)
            assert response.json()["error"] == "unauthorized"
            assert "Authorization" in response.json()["details"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
    product = requests.get(system.url("/products/ACC-1"), timeout=10).json()
    assert (product["price"], product["on_hand"]) == (100, 10)
    stop(system)


def test_the_admin_token_creates_restocks_and_reprices_and_orders_follow(system):
    start(system, ADMIN_TOKEN=TOKEN)
    created = call(system, "POST", "/products", {"sku": "NEW-1", "name": "New", "price": 100, "stock": 2},
                   token=TOKEN)
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/products/NEW-1"
    assert created.json()["available"] == 2
    restocked = call(system, "POST", "/products/NEW-1/restock", {"quantity": 5}, token=TOKEN)
    assert restocked.json()["on_hand"] == 7
    repriced = call(system, "PATCH", "/products/NEW-1", {"price": 250, "name": "Newer"}, token=TOKEN)
    assert (repriced.json()["price"], repriced.json()["name"]) == (250, "Newer")
    assert call(system, "PATCH", "/products/NEW-1", {"active": "yes"}, token=TOKEN).status_code == 400
    assert call(system, "POST", "/products/NOPE-1/restock", {"quantity": 1}, token=TOKEN).status_code == 404

    # orders learns the new price by event and charges it
    def priced_order():
        response = system.place_order("ann@example.com", [("NEW-1", 2)])
        return response.status_code == 202 and response.json()["total"] == 500 and response

    assert eventually(priced_order, message="order at the new price")
    # customer routes need no token
    assert requests.get(system.url("/products/NEW-1"), timeout=10).json()["on_hand"] == 7
    stop(system)


def test_cors_only_for_configured_origins_with_preflight(system):
    start(system, CORS_ALLOWED_ORIGINS="https://shop.example, https://admin.example")
    allowed, other = "https://shop.example", "https://evil.example"

    preflight = requests.options(system.url("/orders"), headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key"}, timeout=10)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]

    response = requests.get(system.url("/orders"), headers={"Origin": allowed}, timeout=10)
    assert response.headers["Access-Control-Allow-Origin"] == allowed
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    error = requests.get(system.url("/nowhere"), headers={"Origin": allowed}, timeout=10)
    assert error.status_code == 404 and error.headers["Access-Control-Allow-Origin"] == allowed

    refused = requests.options(system.url("/orders"), headers={
        "Origin": other, "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Origin" not in requests.get(
        system.url("/orders"), headers={"Origin": other}, timeout=10).headers
    assert requests.options(system.url("/nowhere"), headers={"Origin": allowed}, timeout=10).status_code == 404
    stop(system)


def test_no_cors_by_default(system):
    start(system)
    response = requests.get(system.url("/orders"), headers={"Origin": "https://shop.example"}, timeout=10)
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = requests.options(system.url("/orders"), headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    stop(system)
