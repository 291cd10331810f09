"""Who may do what over HTTP, against the real services: bearer tokens (JWTs)
checked at the front door, customers confined to their own orders on every
route, the admin scope for everybody's orders and for the catalogue's writes
(on inventory's own admin API, with the same tokens), rate limits shared by
several orders processes, and CORS for configured origins."""
import json
import os
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import eventually, free_port, tokens

# inventory's admin API (system.admin_url)
WRITES = (("POST", "/products", {"sku": "NEW-1", "name": "New", "price": 100}),
          ("POST", "/products/ACC-1/restock", {"quantity": 5}),
          ("PATCH", "/products/ACC-1", {"price": 999}))
ANN, BOB = "ann@example.com", "bob@example.com"


def start(system, **env):
    system.env.update(env)
    system.start("inventory", "orders")
    system.create_products(("ACC-1", "Thing", 100, 10))
    return system


def stop(system):
    for service, instance in list(system.processes):  # a throwaway system: no graceful stop needed
        system.kill(service, instance)


def call(system, method, path, body=None, headers=None):
    return requests.request(method, system.url(path), json=body, headers=headers or {}, timeout=10)


def admin_call(system, method, path, body=None, headers=None):
    """A request to inventory's admin API."""
    return requests.request(method, system.admin_url(path), json=body, headers=headers or {}, timeout=10)


def order_body(email=None, quantity=1):
    body = {"lines": [{"sku": "ACC-1", "quantity": quantity}]}
    if email:
        body["customer_email"] = email
    return body


def all_orders(system):
    return call(system, "GET", "/orders?limit=100", headers=tokens.admin()).json()["orders"]


def bad_tokens():
    """(name, Authorization header value) of every way a token can be wrong."""
    now = int(time.time())
    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "customer:ann", "email": ANN,
              "exp": now + 600}

    def b64(data):
        import base64
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return [
        ("no token", None),
        ("not bearer", "Basic " + tokens.token(ANN)),
        ("malformed header", "Bearer"),
        ("garbage", "Bearer abc.def"),
        ("expired", "Bearer " + tokens.token(ANN, exp=now - 120)),
        ("not yet valid", "Bearer " + tokens.token(ANN, nbf=now + 600)),
        ("wrong issuer", "Bearer " + tokens.token(ANN, iss="https://evil.example")),
        ("wrong audience", "Bearer " + tokens.token(ANN, aud="someone-else")),
        ("bad signature", "Bearer " + jwt.encode(claims, stranger, algorithm="ES256")),
        ("alg none", "Bearer {}.{}.".format(b64({"alg": "none", "typ": "JWT"}), b64(claims))),
    ]


def assert_unauthorized(response, name):
    assert response.status_code == 401, (name, response.text)
    assert response.headers["WWW-Authenticate"].startswith("Bearer "), name
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == "unauthorized" and "Authorization" in body["details"], (name, body)


def test_bad_tokens_are_401_with_a_challenge_and_do_nothing(system):
    start(system)
    for name, authorization in bad_tokens():
        headers = {"Authorization": authorization} if authorization else {}
        assert_unauthorized(call(system, "POST", "/orders", order_body(ANN), headers), name)
        assert_unauthorized(call(system, "GET", "/orders", headers=headers), name)
        for method, path, body in WRITES:
            assert_unauthorized(admin_call(system, method, path, body, headers), name)
    expired = call(system, "GET", "/orders", headers=tokens.bearer(tokens.token(ANN, exp=int(time.time()) - 120)))
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert all_orders(system) == []
    product = call(system, "GET", "/products/ACC-1").json()  # catalogue reads are public
    assert (product["price"], product["on_hand"]) == (100, 10)
    with system.rpc() as rpc:
        assert [product["sku"] for product in rpc.inventory.list_products()] == ["ACC-1"]
    stop(system)


def test_a_customer_token_on_an_admin_route_is_403_insufficient_scope(system):
    start(system)
    for method, path, body in WRITES:
        response = admin_call(system, method, path, body, tokens.customer(ANN))
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"] == "insufficient_scope"
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert 'scope="orders:admin"' in response.headers["WWW-Authenticate"]
    product = call(system, "GET", "/products/ACC-1").json()
    assert (product["price"], product["on_hand"]) == (100, 10)
    stop(system)


def test_the_admin_scope_creates_restocks_and_reprices_and_orders_follow(system):
    start(system)
    admin = tokens.admin()
    created = admin_call(system, "POST", "/products", {"sku": "NEW-1", "name": "New", "price": 100, "stock": 2},
                         admin)
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/products/NEW-1"
    assert admin_call(system, "GET", created.headers["Location"], headers=admin).json() == created.json()
    assert created.json()["available"] == 2
    restocked = admin_call(system, "POST", "/products/NEW-1/restock", {"quantity": 5}, admin)
    assert restocked.json()["on_hand"] == 7
    repriced = admin_call(system, "PATCH", "/products/NEW-1", {"price": 250, "name": "Newer"}, admin)
    assert (repriced.json()["price"], repriced.json()["name"]) == (250, "Newer")
    assert admin_call(system, "PATCH", "/products/NEW-1", {"active": "yes"}, admin).status_code == 400
    assert admin_call(system, "POST", "/products/NOPE-1/restock", {"quantity": 1}, admin).status_code == 404
    # the orders API has no catalogue writes: the catalogue's owner serves them
    for method, path, body in WRITES:  # 405 where orders reads the same path, 404 where it has none
        assert call(system, method, path, body, admin).status_code in (404, 405), (method, path)

    # orders learns the new price by event and charges it
    def priced_order():
        response = system.place_order(ANN, [("NEW-1", 2)])
        return response.status_code == 202 and response.json()["total"] == 500 and response

    assert eventually(priced_order, message="order at the new price")
    # catalogue reads need no token
    assert requests.get(system.url("/products/NEW-1"), timeout=10).json()["on_hand"] == 7
    stop(system)


def test_two_customers_cannot_read_list_cancel_or_replay_each_others_orders(system):
    start(system)
    ann, bob = tokens.customer(ANN), tokens.customer(BOB)
    key = uuid.uuid4().hex
    placed = call(system, "POST", "/orders", order_body(), dict(ann, **{"Idempotency-Key": key}))
    assert placed.status_code == 202, placed.text
    ann_order = placed.json()
    assert ann_order["customer_email"] == ANN
    path = "/orders/{}".format(ann_order["id"])

    # placing for somebody else is refused, naming the field, and places nothing
    refused = call(system, "POST", "/orders", order_body(ANN), bob)
    assert refused.status_code == 403 and "customer_email" in refused.json()["details"]

    # reading or cancelling Ann's order: the same 404 as an order that does not exist
    missing = call(system, "GET", "/orders/{}".format(uuid.uuid4()), headers=bob)
    for method, target in (("GET", path), ("POST", path + "/cancel")):
        response = call(system, method, target, headers=bob)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"] == missing.json()["error"] == "not_found"
        assert ANN not in response.text
    assert call(system, "GET", path, headers=ann).json()["status"] != "cancelled"

    # listing: Bob sees his own orders only, and may not filter by Ann
    assert call(system, "GET", "/orders", headers=bob).json()["orders"] == []
    assert call(system, "GET", "/orders?customer_email=" + ANN, headers=bob).status_code == 403
    assert [order["id"] for order in call(system, "GET", "/orders", headers=ann).json()["orders"]] == \
        [ann_order["id"]]

    # replaying Ann's Idempotency-Key: Bob gets his own new order, never Ann's, and no 409 naming it
    for body in (order_body(), order_body(quantity=2)):
        replay = call(system, "POST", "/orders", body, dict(bob, **{"Idempotency-Key": key}))
        assert ann_order["id"] not in replay.text
        assert replay.status_code in (202, 409), replay.text
    bob_orders = call(system, "GET", "/orders", headers=bob).json()["orders"]
    assert len(bob_orders) == 1 and bob_orders[0]["customer_email"] == BOB
    assert all(order["id"] != ann_order["id"] for order in bob_orders)

    # an operator sees and cancels anybody's order, and places for anybody
    admin = tokens.admin()
    assert call(system, "GET", path, headers=admin).json()["id"] == ann_order["id"]
    assert {order["customer_email"] for order in call(system, "GET", "/orders", headers=admin).json()["orders"]} \
        == {ANN, BOB}
    assert [order["id"] for order in call(system, "GET", "/orders?customer_email=ANN@example.com",
                                          headers=admin).json()["orders"]] == [ann_order["id"]]
    for_cy = call(system, "POST", "/orders", order_body("cy@example.com"), admin)
    assert for_cy.status_code == 202 and for_cy.json()["customer_email"] == "cy@example.com"
    assert call(system, "POST", path + "/cancel", headers=admin).json()["status"] == "cancelled"
    stop(system)


def _place_order_traces(system, instance):
    path = os.path.join(system.log_dir, "orders.{}.log".format(instance))
    with open(path, errors="replace") as stream:
        return [line for line in stream if '"http_place_order"' in line]


def test_rate_limits_hold_across_two_orders_processes_sharing_one_database(system):
    # one window for the whole test (a window boundary mid-test would reset the count)
    start(system, ORDER_RATE_LIMIT="4", ANONYMOUS_RATE_LIMIT="3", RATE_LIMIT_WINDOW="3600")
    # the same HTTP port (SO_REUSEPORT), the same database; a metrics port of its own, so
    # the test can wait until it serves (until then the kernel gives instance 1 every connection)
    metrics_port = free_port()
    system.start("orders", instance=2, env={"ORDERS_METRICS_PORT": str(metrics_port)})
    eventually(lambda: requests.get("http://127.0.0.1:{}/health".format(metrics_port), timeout=1).ok,
               timeout=60)
    ann = tokens.customer(ANN)
    answers = []
    # each request on a new connection: the kernel spreads them over both processes
    def both_processes_answered():
        answers.append(requests.post(system.url("/orders"), json=order_body(), headers=ann, timeout=10))
        return len(answers) >= 12 and all(_place_order_traces(system, instance) for instance in (1, 2))

    eventually(both_processes_answered, timeout=60, interval=0,
               message="both processes to take requests (one process took every request)")
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(202) == 4, statuses
    assert set(statuses[4:]) == {429}, statuses
    limited = answers[-1]
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert len(call(system, "GET", "/orders?limit=100", headers=ann).json()["orders"]) == 4
    # another customer has a budget of their own
    assert call(system, "POST", "/orders", order_body(), tokens.customer(BOB)).status_code == 202

    # unauthenticated attempts are counted per client address
    anonymous = [call(system, "POST", "/orders", order_body(ANN)).status_code for _ in range(5)]
    assert anonymous[:3] == [401, 401, 401] and anonymous[3:] == [429, 429], anonymous
    stop(system)


def test_cors_only_for_configured_origins_with_preflight(system):
    start(system, CORS_ALLOWED_ORIGINS="https://shop.example, https://admin.example")
    allowed, other = "https://shop.example", "https://evil.example"

    preflight = requests.options(system.url("/orders"), headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"}, timeout=10)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    response = requests.get(system.url("/orders"), headers=dict(tokens.customer(ANN), Origin=allowed), timeout=10)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == allowed
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    error = requests.get(system.url("/nowhere"), headers={"Origin": allowed}, timeout=10)
    assert error.status_code == 404 and error.headers["Access-Control-Allow-Origin"] == allowed

    refused = requests.options(system.url("/orders"), headers={
        "Origin": other, "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Origin" not in requests.get(
        system.url("/orders"), headers=dict(tokens.customer(ANN), Origin=other), timeout=10).headers
    assert requests.options(system.url("/nowhere"), headers={"Origin": allowed}, timeout=10).status_code == 404
    stop(system)


def test_no_cors_by_default(system):
    start(system)
    response = requests.get(system.url("/orders"), headers=dict(tokens.customer(ANN), Origin="https://shop.example"),
                            timeout=10)
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = requests.options(system.url("/orders"), headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    stop(system)
