"""Arbitrary input at every HTTP route and every public RPC method (issue 11, item 4).

Hypothesis throws arbitrary JSON values, strings (control characters, NUL,
non-BMP characters, unpaired surrogates, long ones) and integers (huge,
negative) at each entrypoint the three services declare, found by looking
at the service classes, so a new route or method is covered without editing
this file. On SQLite and PostgreSQL it asserts:

- HTTP: never a 5xx (``/ready`` may say 503: that is its job), and every
  error is the JSON error shape;
- RPC: nothing but ``InvalidInput``, ``NotFound`` or ``Conflict`` is raised
  (no ``RemoteError``, which would mean an untyped error, and no
  ``InternalError``, which would mean a bug the service did not expect);
- a refused write stored nothing.

Bounded: ``EXAMPLES`` per target, ``derandomize=True`` (the same examples on
every run, so a failure reproduces); shrinking is off. About 20-25 s per backend here.
"""
import base64
import inspect
import json
import re
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import example as hypothesis_example
from hypothesis import strategies as st
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from sqlalchemy import text

from services.common.db.database import make_engine
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.http.front_door import JsonHttpHandler
from services.common.messaging.rpc import Rpc
from tests.integration.conftest import ALL_SERVICES
from tests.support import eventually, tokens

EXAMPLES = 40
# about 7-17 s per test here (HTTP ~8 s, RPC 11-17 s per backend)
pytestmark = pytest.mark.slow
CLIENT_ERRORS = (InvalidInput, NotFound, Conflict)
# routes whose 503 is an answer, not a failure
MAY_BE_UNAVAILABLE = {"/ready"}


def client_headers():
    """What every HTTP request carries. The one place to add credentials (e.g. a JWT) when routes need them."""
    return tokens.admin()


# values -----------------------------------------------------------------------------

SPECIAL_TEXT = ["", "\x00", "a\x00b", "\ud800", "x\udfff", "\U0001F600", "NL-1\n", "\r\n", "\u2028", "\x7f",
                " ", "\t", "%00", "ann@bücher.example", "jürgen@example.com", "A" * 300]
chars = st.characters(exclude_categories=())  # every code point, surrogates included
strings = st.one_of(st.text(chars, max_size=20), st.sampled_from(SPECIAL_TEXT),
                    st.text(chars, min_size=60, max_size=120))
integers = st.one_of(st.integers(-2 ** 70, 2 ** 70),
                     st.sampled_from([0, 1, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63, -2 ** 63 - 1, 10 ** 30]))
scalars = st.one_of(st.none(), st.booleans(), integers, st.floats(allow_nan=False, allow_infinity=False),
                    strings)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(strings, inner, max_size=3), max_leaves=8)
header_values = st.one_of(st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=80),
                          st.sampled_from(["k\x00", "x" * 300, "ok-key"])).filter(
    lambda value: re.fullmatch(r"\S[^\r\n]*|", value) is not None)  # what an HTTP client can send at all

def forged_cursor(moment, order_id):
    raw = json.dumps([moment, order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


moments = st.one_of(st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                     "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00"]), json_values)
cursors = st.one_of(st.builds(forged_cursor, moments, st.one_of(strings, json_values)), strings)


TEXT_TRAPS = ["NL-1\n", "a\x00b", "\ud800", "x\udfff", "\U0001F600", "\x7f", "", "A" * 300, 5, None, ["P-1"]]
NUMBER_TRAPS = [0, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63, -2 ** 63 - 1, 10 ** 30, 1.5, "1", True, None, "\x00"]
EMAIL_TRAPS = ["Bob.Case@Example.COM", "ann@bücher.example", "jürgen@example.com", "a\x00@example.com",
               "\ud800@example.com", "ann@example.com\n", "ann@-x.example", "@", "a@" + "b" * 300, 5, None]
CURSOR_TRAPS = [forged_cursor("0001-01-01T00:00:00+01:00", "x"), forged_cursor("9999-12-31T23:59:59-01:00", "x"),
                forged_cursor("2026-01-01T00:00:00+00:00", "a\x00b"), forged_cursor("2026-01-01T00:00:00", "x"),
                forged_cursor(1, 2), "!!", "A" * 5000, "\x00"]
# a valid value and the traps for each field (or parameter) a client can send
FIELDS = {
    "customer_email": ("ann@example.com", EMAIL_TRAPS), "recipient": ("ann@example.com", EMAIL_TRAPS),
    "lines": ([{"sku": "P-1", "quantity": 1}],
              [[], [{"sku": "P-1", "quantity": 2 ** 31}], [{"sku": "NL-1\n", "quantity": 1}],
               [{"sku": "\ud800", "quantity": 1}], [{"sku": "P-1", "quantity": 1}] * 2, "P-1", None]),
    "sku": ("P-1", TEXT_TRAPS), "name": ("Pen", TEXT_TRAPS), "reason": ("a reason", TEXT_TRAPS),
    "phone": ("+4930123456", TEXT_TRAPS), "device_token": ("token-1", TEXT_TRAPS),
    "channel": ("email", TEXT_TRAPS), "order_id": (None, TEXT_TRAPS),  # the valid one is set per run
    "quantity": (1, NUMBER_TRAPS), "price": (100, NUMBER_TRAPS), "stock": (5, NUMBER_TRAPS),
    "limit": (5, NUMBER_TRAPS), "notification_id": (1, NUMBER_TRAPS), "active": (True, NUMBER_TRAPS),
    "status": ("confirmed", TEXT_TRAPS), "channels": (["email"], [[], ["email", "email"], ["\x00"], "email"]),
    "cursor": (None, CURSOR_TRAPS),
}


def valid(name, good):
    if name == "order_id":
        return good[1]
    return FIELDS[name][0] if name in FIELDS else good[0]


def sweep(name, good):
    """The explicit examples for one field: each of its traps (valid values elsewhere)."""
    return FIELDS[name][1] if name in FIELDS else TEXT_TRAPS + NUMBER_TRAPS


def field_values(good):
    """Per field: valid half the time (so that a bad neighbour is reached), else a trap or anything."""
    anything = values(good)
    strategies = {}
    for name, (_, traps) in FIELDS.items():
        ok = st.just(valid(name, good))
        strategies[name] = st.one_of(ok, ok, st.sampled_from(traps), anything)
    strategies["cursor"] = st.one_of(cursors, st.sampled_from(CURSOR_TRAPS))
    return strategies


# the JSON fields each route reads (others get arbitrary objects only)
ROUTE_FIELDS = {
    ("POST", "/orders"): ["customer_email", "lines"],
    ("POST", "/products"): ["sku", "name", "price", "stock"],
    ("PATCH", "/products/<string:sku>"): ["name", "price", "active"],
    ("POST", "/products/<string:sku>/restock"): ["quantity"],
    ("POST", "/orders/<string:order_id>/cancel"): ["reason"],
}


def values(good):
    """Arbitrary JSON, or a value that is valid somewhere, so that deeper code is reached too."""
    return st.one_of(json_values, st.sampled_from(good))


def shaped(good, fields):
    """A JSON object with the route's fields (all of them, or some), or anything."""
    known = field_values(good)
    return st.one_of(st.fixed_dictionaries({name: known[name] for name in fields}),
                     st.fixed_dictionaries({name: known[name] for name in fields}),
                     st.fixed_dictionaries({}, optional={name: known[name] for name in fields}),
                     st.dictionaries(strings, values(good), max_size=3), json_values)


def encode(value):
    """Text as a client puts it in a URL: UTF-8 (unpaired surrogates as the bytes they would be)."""
    if not isinstance(value, str):
        value = json.dumps(value)
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


# the system --------------------------------------------------------------------------


@pytest.fixture
def system(runner_factory, service_config, rpc):
    runner = runner_factory(service_config, *ALL_SERVICES)
    runner.start()
    rpc.inventory.create_product("P-1", "Pen", 100, 1000)
    eventually(lambda: rpc.orders.list_catalogue(), message="catalogue copy")
    order = rpc.orders.create_order("ann@example.com", [{"sku": "P-1", "quantity": 1}])
    engines = {key.split(":")[0]: make_engine(uri) for key, uri in service_config["DB_URIS"].items()}
    yield service_config, order["id"], engines
    for engine in engines.values():
        engine.dispose()


SNAPSHOT = {
    # what a refused write could change and nothing asynchronous does
    "orders": ["SELECT count(*) FROM orders", "SELECT count(*) FROM order_status_changes WHERE to_status = 'cancelled'",
               "SELECT count(*) FROM customer_idempotency_keys"],
    "inventory": ["SELECT count(*), coalesce(sum(on_hand), 0), coalesce(sum(version), 0), "
                  "coalesce(sum(price), 0) FROM products"],
    "notifications": ["SELECT count(*) FROM notification_preferences",
                      "SELECT count(*) FROM notifications WHERE status = 'queued'"],
}


def snapshot(engines):
    found = []
    for service, statements in SNAPSHOT.items():
        with engines[service].connect() as connection:
            found.extend(tuple(connection.execute(text(statement)).first()) for statement in statements)
    return found


def entrypoints(kind):
    for service in ALL_SERVICES:
        for name, method in inspect.getmembers(service, inspect.isfunction):
            for entrypoint in getattr(method, ENTRYPOINT_EXTENSIONS_ATTR, ()):
                if isinstance(entrypoint, kind):
                    yield service, name, method, entrypoint


def run(examples, strategy, check, explicit=()):
    """``check`` on each ``explicit`` example (a sweep of every field's traps), then on ``examples`` drawn ones."""
    # no shrinking: each example is a real request, and a failure is reported as found
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def property_holds(example):
        check(example)
    for case in explicit:
        property_holds = hypothesis_example(case)(property_holds)
    property_holds()


def with_trap(base, part, name, trap):
    case = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    case[part] = dict(case[part] or {}, **{name: trap})
    return case


# HTTP -------------------------------------------------------------------------------


def test_no_http_input_gets_a_5xx_or_stores_anything_when_refused(system):
    config, order_id, engines = system
    good = ["P-1", order_id, "ann@example.com", 1, 5, "confirmed", "a reason", True, 100]
    path_values = {"order_id": order_id, "sku": "P-1"}
    # orders' API, and inventory's admin API on its own address
    routes = [("http://{}".format(config[getattr(service, "web_server_address_key", "WEB_SERVER_ADDRESS")]),
               entrypoint.method, entrypoint.url) for service, _, _, entrypoint in entrypoints(JsonHttpHandler)]
    assert len(routes) >= 15, routes  # /metrics is served on the metrics port, not here

    for base, method, rule in routes:
        path_params = re.findall(r"<(?:\w+:)?(\w+)>", rule)
        request = st.fixed_dictionaries({
            "path": st.fixed_dictionaries({name: st.one_of(st.just(path_values[name]), st.just(path_values[name]),
                                                           field_values(good)[name])
                                           for name in path_params}),
            "query": st.one_of(st.fixed_dictionaries({}, optional={
                key: field_values(good)[key] for key in ("status", "customer_email", "limit", "cursor")}),
                st.dictionaries(strings, values(good), max_size=2)),
            "body": shaped(good, ROUTE_FIELDS.get((method, rule), [])) if method in ("POST", "PATCH") else st.none(),
            "headers": st.dictionaries(st.sampled_from(["Idempotency-Key", "X-Request-ID"]), header_values,
                                       max_size=2),
        })

        def check(example, method=method, rule=rule, base=base):
            path = rule
            for name, value in example["path"].items():
                path = re.sub(r"<(?:\w+:)?{}>".format(name), encode(value), path)
            query = "&".join("{}={}".format(encode(key), encode(value)) for key, value in example["query"].items())
            headers = dict(client_headers(), **example["headers"])
            data = None
            if example["body"] is not None:
                headers["Content-Type"] = "application/json"
                data = json.dumps(example["body"]).encode("ascii")
            before = snapshot(engines) if method != "GET" else None
            response = requests.request(method, base + path + ("?" + query if query else ""), data=data,
                                        headers=headers, timeout=15)
            where = "{} {} -> {}: {}".format(method, path, response.status_code, response.text[:300])
            allowed_5xx = {503} if rule in MAY_BE_UNAVAILABLE else set()
            assert response.status_code < 500 or response.status_code in allowed_5xx, where
            if response.status_code >= 400:
                assert set(response.json()) >= {"error", "message", "details"}, where
                if before is not None:
                    assert snapshot(engines) == before, "refused, yet something was stored: " + where

        fields = ROUTE_FIELDS.get((method, rule), [])
        valid_case = {"path": {name: path_values[name] for name in path_params}, "query": {},
                "body": {name: valid(name, good) for name in fields} if method in ("POST", "PATCH") else None,
                "headers": {}}
        explicit = [valid_case]
        for name in path_params:
            explicit += [with_trap(valid_case, "path", name, trap) for trap in sweep(name, good)]
        for name in fields:
            explicit += [with_trap(valid_case, "body", name, trap) for trap in sweep(name, good)]
        if (method, rule) == ("GET", "/orders"):
            for name in ("status", "customer_email", "limit", "cursor"):
                explicit += [with_trap(valid_case, "query", name, trap) for trap in sweep(name, good)]
        if (method, rule) == ("POST", "/orders"):
            explicit += [with_trap(valid_case, "headers", "Idempotency-Key", trap) for trap in ["k\x00", "x" * 300, "a b"]]
        run(EXAMPLES, request, check, explicit)


# RPC --------------------------------------------------------------------------------


def test_no_rpc_input_gets_an_untyped_error_or_stores_anything_when_refused(system, rpc):
    config, order_id, engines = system
    good = ["P-1", order_id, "ann@example.com", 1, 5, "confirmed", "email", True, 100,
            [{"sku": "P-1", "quantity": 1}], ["email"]]
    methods = [(service.name, name, method) for service, name, method, _ in entrypoints(Rpc)]
    assert len(methods) >= 25, methods

    for service_name, name, method in methods:
        parameters = list(inspect.signature(method).parameters.values())[1:]  # without self
        arguments = {}
        for parameter in parameters:
            known = field_values(good)
            given_value = known.get(parameter.name, values(good))
            if parameter.kind == parameter.VAR_KEYWORD:
                arguments["**"] = st.fixed_dictionaries({}, optional={
                    key: known[key] for key in ("name", "price", "active", "stock")})
            elif parameter.default is parameter.empty:
                arguments[parameter.name] = given_value
            else:
                arguments[parameter.name] = st.one_of(st.just(inspect.Parameter.empty), given_value)

        def check(example, service_name=service_name, name=name):
            kwargs = {key: value for key, value in example.items()
                      if key != "**" and value is not inspect.Parameter.empty}
            kwargs.update(example.get("**", {}))
            before = snapshot(engines)
            where = "{}.{}(**{!r})".format(service_name, name, kwargs)[:400]
            try:
                getattr(getattr(rpc, service_name), name)(**kwargs)
            except CLIENT_ERRORS:
                assert snapshot(engines) == before, "refused, yet something was stored: " + where
            except Exception as exc:  # RemoteError (untyped), InternalError, ServiceUnavailable...
                raise AssertionError("{} raised {}: {}".format(where, type(exc).__name__, exc)) from None

        base = {}
        for parameter in parameters:
            if parameter.kind == parameter.VAR_KEYWORD:
                base["**"] = {"name": "Pen"}
            elif parameter.default is parameter.empty:
                base[parameter.name] = valid(parameter.name, good)
            else:
                base[parameter.name] = inspect.Parameter.empty
        explicit = [base]
        for parameter in parameters:
            if parameter.kind == parameter.VAR_KEYWORD:
                explicit += [dict(base, **{"**": {key: trap}}) for key in ("name", "price", "active")
                             for trap in sweep(key, good)]
            else:
                explicit += [dict(base, **{parameter.name: trap}) for trap in sweep(parameter.name, good)]
        examples = EXAMPLES if parameters else 2
        run(examples, st.fixed_dictionaries(arguments), check, explicit)
