"""Bearer tokens at the orders front door (auth.py) and what each caller may
see and do (api.py), under worker_factory on a real SQLite file; the shared
fixed-window rate limit (ratelimit.py)."""
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.common.errors import Conflict, NotFound, ServiceUnavailable
from services.common.messaging.events import new_event
from services.common.http.front_door import Forbidden, JsonHttpHandler, Unauthorized
from services.orders import ratelimit
from services.common.http.auth import TokenVerifier
from services.orders.models import Order, RateLimitCounter
from services.orders.service import OrdersService
from tests.support import service_worker, tokens

ANN, BOB = "ann@example.com", "bob@example.com"


def verifier(**settings):
    return TokenVerifier(dict(tokens.SETTINGS, **settings))


def header(token):
    return "Bearer " + token


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(claims):
    return "{}.{}.".format(_b64({"alg": "none", "typ": "JWT"}), _b64(claims))


def valid_claims(**changes):
    now = int(time.time())
    claims = {"iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "c-1", "email": ANN,
              "exp": now + 600, "iat": now}
    claims.update(changes)
    return claims


def test_a_valid_customer_token_names_the_customer():
    identity = verifier().identity(header(tokens.token("Ann@Example.com")))
    assert (identity.email, identity.admin) == (ANN, False)
    assert identity.subject == "customer:Ann@Example.com"


@pytest.mark.parametrize("claims", [{"scope": "openid orders:admin"}, {"scp": ["orders:admin"]}])
def test_the_admin_scope_comes_from_scope_or_scp(claims):
    assert verifier().identity(header(tokens.token(**claims))).admin


@pytest.mark.parametrize("name, token_factory, error", [
    ("expired", lambda: tokens.token(ANN, exp=int(time.time()) - 120), "expired"),
    ("not yet valid", lambda: tokens.token(ANN, nbf=int(time.time()) + 600), "not valid yet"),
    ("wrong issuer", lambda: tokens.token(ANN, iss="https://evil.example"), "issuer"),
    ("wrong audience", lambda: tokens.token(ANN, aud="another-api"), "audience"),
    ("no audience", lambda: tokens.token(ANN, aud=None), "aud"),
    ("no subject", lambda: tokens.token(ANN, sub=None), "sub"),
    ("no expiry", lambda: tokens.token(ANN, exp=None), "exp"),
    ("bad signature", lambda: jwt.encode(valid_claims(), ec.generate_private_key(ec.SECP256R1()),
                                         algorithm="ES256"), "not valid"),
    ("tampered payload", lambda: _tampered(), "not valid"),
    ("alg none", lambda: unsigned(valid_claims()), "not valid"),
    ("HS256 with the public key as secret", lambda: _key_confusion(), "not valid"),
    ("garbage", lambda: "not.a.token", "not valid"),
])
def test_bad_tokens_are_401_invalid_token(name, token_factory, error):
    with pytest.raises(Unauthorized) as refused:
        verifier().identity(header(token_factory()))
    assert error in refused.value.message, name
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]
    assert "Authorization" in refused.value.details


def _tampered():
    head, payload, signature = tokens.token(ANN).split(".")
    return ".".join([head, _b64(valid_claims(email=BOB)), signature])


def _key_confusion():
    with open(tokens.PUBLIC_KEY_FILE, "rb") as stream:
        secret = stream.read()
    # PyJWT refuses to sign with a PEM as HMAC secret; build the token by hand
    import hashlib
    import hmac
    signing_input = "{}.{}".format(_b64({"alg": "HS256", "typ": "JWT"}), _b64(valid_claims()))
    signature = base64.urlsafe_b64encode(
        hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return signing_input + "." + signature


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "token"])
def test_missing_or_malformed_headers_are_401(authorization):
    with pytest.raises(Unauthorized) as refused:
        verifier().identity(authorization)
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_nothing_configured_refuses_every_token():
    for settings in ({"JWT_PUBLIC_KEY_FILE": ""}, {"JWT_ISSUER": ""}, {"JWT_AUDIENCE": ""},
                     {"JWT_PUBLIC_KEY_FILE": "/nonexistent.pem"}):
        with pytest.raises(Unauthorized):
            verifier(**settings).identity(header(tokens.token(ANN)))


def test_a_shared_hs256_secret_only_when_configured_and_long_enough():
    secret = "s" * 40
    hs_token = jwt.encode(valid_claims(), secret, algorithm="HS256")
    with pytest.raises(Unauthorized):  # a key file is configured: HS256 is not accepted
        verifier().identity(header(hs_token))
    assert verifier(JWT_PUBLIC_KEY_FILE="", JWT_DEV_HS256_SECRET=secret).identity(header(hs_token)).email == ANN
    with pytest.raises(Unauthorized):
        verifier(JWT_PUBLIC_KEY_FILE="", JWT_DEV_HS256_SECRET="short").identity(
            header(jwt.encode(valid_claims(), "short", algorithm="HS256")))


def test_an_unreachable_jwks_endpoint_is_503_not_401():
    with pytest.raises(ServiceUnavailable):
        verifier(JWT_JWKS_URL="http://127.0.0.1:9/jwks.json").identity(header(tokens.token(ANN)))


# who sees what -----------------------------------------------------------------------


@pytest.fixture
def orders(database, outbox):
    config = dict(tokens.SETTINGS, MAX_LINE_QUANTITY=10, MAX_ORDER_LINES=3, IDEMPOTENCY_KEY_TTL=60,
                  ORDER_RATE_LIMIT=1000, ANONYMOUS_RATE_LIMIT=1000, RATE_LIMIT_WINDOW=60)
    service = service_worker(OrdersService, db=database("orders"), outbox=outbox, config=config)
    service.auth = TokenVerifier(config)
    service.correlation_id = "req-1"
    service.update_catalogue(new_event("inventory", "product_changed", {
        "sku": "A", "name": "Apple", "price": 150, "active": True, "version": 1}))
    return service


def request(method, path, authorization=None, payload=None, query=None, headers=None):
    all_headers = dict(headers or {})
    if authorization is not None:
        all_headers["Authorization"] = authorization
    return Request(EnvironBuilder(method=method, path=path, headers=all_headers, query_string=query,
                                  content_type="application/json" if payload is not None else None,
                                  data=json.dumps(payload) if payload is not None else None).get_environ())


def place(orders, email, token_email=None, key=None, quantity=1, admin=False):
    token = tokens.admin_token() if admin else tokens.token(token_email or email)
    payload = {"lines": [{"sku": "A", "quantity": quantity}]}
    if email is not None:
        payload["customer_email"] = email
    return orders.http_place_order(request("POST", "/orders", header(token), payload,
                                           headers={"Idempotency-Key": key} if key else None))


def test_a_customer_orders_for_themselves_only(orders, outbox):
    status, _, order = place(orders, None, token_email="Ann@Example.com")
    assert (status, order["customer_email"]) == (202, ANN)
    assert place(orders, "ANN@example.com", token_email=ANN)[2]["customer_email"] == ANN
    with pytest.raises(Forbidden) as refused:
        place(orders, BOB, token_email=ANN)
    assert "customer_email" in refused.value.details
    assert outbox.types() == ["order_created", "order_created"]
    with orders.db.get_session() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 2


def test_no_token_places_nothing(orders, outbox):
    for authorization in (None, "Bearer nope"):
        with pytest.raises(Unauthorized):
            orders.http_place_order(request("POST", "/orders", authorization,
                                            {"customer_email": ANN, "lines": [{"sku": "A", "quantity": 1}]}))
    assert outbox.types() == []


def test_customers_cannot_read_list_or_cancel_each_other(orders):
    ann_order = place(orders, ANN)[2]
    bob_order = place(orders, BOB)[2]
    ann, bob = header(tokens.token(ANN)), header(tokens.token(BOB))
    path = "/orders/{}".format(ann_order["id"])
    assert orders.http_get_order(request("GET", path, ann), ann_order["id"])["id"] == ann_order["id"]
    with pytest.raises(NotFound) as hidden:
        orders.http_get_order(request("GET", path, bob), ann_order["id"])
    with pytest.raises(NotFound) as missing:
        orders.http_get_order(request("GET", "/orders/x", bob), "00000000-0000-0000-0000-000000000000")
    assert hidden.value.message.replace(ann_order["id"], "ID") == missing.value.message.replace(
        "00000000-0000-0000-0000-000000000000", "ID")
    with pytest.raises(NotFound):
        orders.http_cancel_order(request("POST", path + "/cancel", bob), ann_order["id"])
    assert orders.get_order(ann_order["id"])["status"] == "pending"

    listed = orders.http_list_orders(request("GET", "/orders", bob))
    assert [order["id"] for order in listed["orders"]] == [bob_order["id"]]
    with pytest.raises(Forbidden):
        orders.http_list_orders(request("GET", "/orders", bob, query={"customer_email": ANN}))
    assert orders.http_cancel_order(request("POST", path + "/cancel", ann), ann_order["id"])["status"] == \
        "cancelled"


def test_an_admin_acts_for_any_customer(orders):
    with pytest.raises(Exception):  # an admin must say for whom
        place(orders, None, admin=True)
    order = place(orders, "Cy@example.com", admin=True)[2]
    assert order["customer_email"] == "cy@example.com"
    place(orders, ANN)
    admin = header(tokens.admin_token())
    assert len(orders.http_list_orders(request("GET", "/orders", admin))["orders"]) == 2
    only_cy = orders.http_list_orders(request("GET", "/orders", admin, query={"customer_email": "CY@example.com"}))
    assert [listed["id"] for listed in only_cy["orders"]] == [order["id"]]
    path = "/orders/{}".format(order["id"])
    assert orders.http_get_order(request("GET", path, admin), order["id"])["id"] == order["id"]
    assert orders.http_cancel_order(request("POST", path + "/cancel", admin), order["id"])["status"] == "cancelled"


def test_idempotency_keys_belong_to_their_customer(orders, outbox):
    ann_order = place(orders, ANN, key="shared-key")[2]
    # the same key from another customer, with another body: a new order, not a 409 naming Ann's
    status, headers, bob_order = place(orders, BOB, key="shared-key", quantity=2)
    assert (status, headers["Idempotent-Replayed"]) == (202, "false")
    assert bob_order["id"] != ann_order["id"] and bob_order["customer_email"] == BOB
    # and the same body too: still Bob's own order, never Ann's
    status, _, bob_again = place(orders, BOB, key="other-key")
    assert bob_again["id"] not in (ann_order["id"], bob_order["id"])
    assert place(orders, BOB, key="other-key")[2]["id"] == bob_again["id"]
    with pytest.raises(Conflict) as conflict:
        place(orders, BOB, key="shared-key", quantity=3)
    assert ann_order["id"] not in json.dumps(conflict.value.details) + conflict.value.message
    assert bob_order["id"] in json.dumps(conflict.value.details)


def test_a_token_without_a_verified_email_is_refused_on_customer_routes(orders):
    place(orders, ANN)
    for token in (tokens.token(None, subject="svc-1"), tokens.token(ANN, email_verified=False)):
        with pytest.raises(Forbidden):
            orders.http_list_orders(request("GET", "/orders", header(token)))
    assert len(orders.http_list_orders(request("GET", "/orders", header(tokens.token(ANN, email_verified=True))))
               ["orders"]) == 1


# rate limits ---------------------------------------------------------------------------


def test_posting_orders_beyond_the_limit_is_429_with_retry_after(orders):
    orders.config.update(ORDER_RATE_LIMIT=2, ANONYMOUS_RATE_LIMIT=1)
    orders.settings = OrdersService.settings.for_config(orders.config)  # settings are read once, at setup
    place(orders, ANN)
    place(orders, ANN)
    with pytest.raises(ratelimit.TooManyRequests) as limited:
        place(orders, ANN)
    assert limited.value.status == 429 and 1 <= int(limited.value.headers["Retry-After"]) <= 60
    with pytest.raises(ratelimit.TooManyRequests):
        place(orders, ANN)
    with orders.db.get_session() as session:  # refused attempts are counted, not rolled back
        assert session.scalars(select(RateLimitCounter.count)).all() == [4]
    place(orders, BOB)  # another customer has their own budget
    anonymous = request("POST", "/orders", None, {"customer_email": ANN, "lines": [{"sku": "A", "quantity": 1}]})
    with pytest.raises(Unauthorized):
        orders.http_place_order(anonymous)
    with pytest.raises(ratelimit.TooManyRequests):
        orders.http_place_order(anonymous)


def test_counters_are_per_window_and_ended_windows_are_forgotten(orders):
    with orders.db.get_session() as session:
        for _ in range(3):
            ratelimit.hit(session, "customer:x", 3, 10, now=1000.0)
        with pytest.raises(ratelimit.TooManyRequests) as limited:
            ratelimit.hit(session, "customer:x", 3, 10, now=1007.5)
        assert limited.value.headers["Retry-After"] == "3"
        ratelimit.hit(session, "customer:x", 3, 10, now=1010.0)  # a new window
        assert ratelimit.forget_ended(session, 10, now=1015.0) == 1
        assert session.scalars(select(RateLimitCounter.window_start)).all() == [1010]


def test_the_error_carries_its_headers_to_the_client():
    handler = JsonHttpHandler("GET", "/x")
    response = handler.error_response(ratelimit.TooManyRequests(7, "Authorization"))
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert json.loads(response.get_data())["error"] == "rate_limited"


# JWKS ----------------------------------------------------------------------------------


class JwksServer:
    """A real HTTP server on loopback publishing a key set that the test can rotate."""

    def __init__(self):
        import http.server
        import threading

        self.keys, self.fetches = [], 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                data = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:{}/jwks.json".format(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, private_key, kid):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
        self.keys.append(dict(jwk, kid=kid, use="sig", alg="ES256"))

    def stop(self):
        self.httpd.shutdown()


@pytest.fixture
def jwks():
    server = JwksServer()
    yield server
    server.stop()


def test_keys_from_a_jwks_url_are_cached_and_a_new_kid_refetches_them(jwks):
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks.publish(first, "k1")
    check = verifier(JWT_PUBLIC_KEY_FILE="", JWT_JWKS_URL=jwks.url, JWT_JWKS_REFRESH_COOLDOWN=0.01)
    for _ in range(3):
        token = jwt.encode(valid_claims(), first, algorithm="ES256", headers={"kid": "k1"})
        assert check.identity(header(token)).email == ANN
    assert jwks.fetches == 1
    # the provider rotates: a token with the new kid makes the verifier fetch the set again
    jwks.publish(second, "k2")
    time.sleep(0.02)  # past the refresh cooldown
    rotated = jwt.encode(valid_claims(email=BOB), second, algorithm="ES256", headers={"kid": "k2"})
    assert check.identity(header(rotated)).email == BOB
    # a kid nobody published, or a key the set does not hold, is refused
    stranger = ec.generate_private_key(ec.SECP256R1())
    for token in (jwt.encode(valid_claims(), stranger, algorithm="ES256", headers={"kid": "k9"}),
                  jwt.encode(valid_claims(), stranger, algorithm="ES256", headers={"kid": "k1"})):
        with pytest.raises(Unauthorized):
            check.identity(header(token))


def test_a_verified_token_is_remembered_but_never_past_its_expiry_or_a_minute(monkeypatch):
    from services.common.http import auth
    check = verifier()
    decoded = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *args, **kwargs: decoded.append(1) or real(*args, **kwargs))
    start = time.time()
    clock = [start]
    monkeypatch.setattr(auth.time, "time", lambda: clock[0])
    short = header(tokens.token(ANN, exp=int(start) + 20))
    long = header(tokens.token(BOB, exp=int(start) + 3600))
    assert check.identity(short).email == check.identity(short).email == ANN
    assert check.identity(long).email == check.identity(long).email == BOB
    assert len(decoded) == 2
    clock[0] = start + 21  # past the short token's exp: checked in full again
    check.identity(long)
    assert len(decoded) == 2
    check.identity(short)
    assert len(decoded) == 3
    clock[0] = start + auth.VERIFIED_TTL + 1  # the long one is remembered a minute at most
    check.identity(long)
    assert len(decoded) == 4
