"""The JSON front door's pieces without a server: body reading, error shape,
CORS decisions, the broker probe."""
import json
import logging

import pytest
from nameko.exceptions import RemoteError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.common.errors import InvalidInput, NotFound, ServiceError, ServiceUnavailable
from services.common.http.front_door import (
    Cors, JsonHttpHandler, MalformedJson, UnsupportedMediaType, error_body, read_headers, read_json, read_query,
)
from services.common.observability.health import check_broker
from services.inventory.schemas import NewProductSchema
from services.orders.schemas import IdempotencyHeaderSchema, ListOrdersSchema
from tests.support import free_port


def request(data=b"", content_type="application/json", query=None, headers=None):
    return Request(EnvironBuilder(method="POST", data=data, content_type=content_type,
                                  query_string=query, headers=headers).get_environ())


def test_errors_always_have_the_three_keys():
    assert error_body("not_found", "No.") == {"error": "not_found", "message": "No.", "details": {}}
    assert error_body("x", "y", {"a": ["b"]})["details"] == {"a": ["b"]}


@pytest.mark.parametrize("data", [b"{", b"[" * 100000, b"\xff\xfe", b'{"a": 1}}', b"1" * 5000])
def test_malformed_json_is_malformed_json(data):
    with pytest.raises(MalformedJson) as error:
        read_json(request(data))
    assert error.value.status == 400 and "_body" in error.value.details


@pytest.mark.parametrize("data", [b"[]", b'"text"', b"null", b"3"])
def test_a_body_must_be_an_object(data):
    with pytest.raises(InvalidInput) as error:
        read_json(request(data))
    assert error.value.details == {"_body": ["Must be a JSON object."]}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_only_json_bodies_are_read(content_type):
    with pytest.raises(UnsupportedMediaType) as error:
        read_json(request(b'{"a": 1}', content_type))
    assert error.value.status == 415 and "Content-Type" in error.value.details


def test_json_variants_and_optional_empty_bodies():
    assert read_json(request(b'{"a": 1}', "application/merge-patch+json")) == {"a": 1}
    assert read_json(request(b"", None), optional=True) == {}
    with pytest.raises(InvalidInput):
        read_json(request(b"  "))


def test_schema_violations_name_every_field():
    with pytest.raises(InvalidInput) as error:
        read_json(request(json.dumps({"sku": "bad sku", "price": -1, "name": "a\x00b", "extra": 1}).encode()),
                  NewProductSchema())
    assert set(error.value.details) == {"sku", "price", "name", "extra"}


def test_query_and_headers_are_validated_by_schemas():
    with pytest.raises(InvalidInput) as error:
        read_query(request(query="limit=0&colour=red&status=lost"), ListOrdersSchema())
    assert set(error.value.details) == {"limit", "colour", "status"}
    assert read_query(request(query="status=pending"), ListOrdersSchema()) == {"status": "pending", "limit": 20}
    assert read_headers(request(headers={"Idempotency-Key": "abc-1", "X-Other": "1"}),
                        IdempotencyHeaderSchema()) == {"idempotency_key": "abc-1"}
    with pytest.raises(InvalidInput) as error:
        read_headers(request(headers={"Idempotency-Key": "has space"}), IdempotencyHeaderSchema())
    assert "Idempotency-Key" in error.value.details


def test_cors_allows_only_listed_origins():
    cors = Cors("https://shop.example, https://admin.example/")
    assert cors.allows("https://shop.example") and cors.allows("https://admin.example")
    assert not cors.allows("https://evil.example") and not cors.allows("")
    assert dict(cors.headers("https://shop.example"))["Access-Control-Allow-Origin"] == "https://shop.example"
    assert cors.headers("https://evil.example") == []
    assert not Cors(None).allows("https://shop.example")
    assert not Cors("").allows("https://shop.example")
    assert Cors("*").allows("https://anything.example")


def test_preflight_names_methods_and_headers_only_for_allowed_origins():
    cors = Cors("https://shop.example")
    allowed = cors.preflight("https://shop.example", ["GET", "POST"])
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS, POST"
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    refused = cors.preflight("https://evil.example", ["GET"])
    assert refused.status_code == 204 and "Access-Control-Allow-Methods" not in refused.headers
    assert refused.headers["Allow"] == "GET, OPTIONS"


def test_the_broker_probe_reports_a_closed_port_as_unreachable():
    result = check_broker("amqp://guest:guest@127.0.0.1:{}/".format(free_port()), timeout=1)
    assert result.startswith("unreachable") or result.startswith("no answer")


@pytest.mark.parametrize("error, level, text", [
    (OperationalError("SELECT 1", {}, Exception("could not connect")), "WARNING", "HTTP 503: database unavailable"),
    (ServiceUnavailable("The inventory service did not answer."), "WARNING",
     "HTTP 503: The inventory service did not answer."),
    (ServiceError("broken invariant"), "WARNING", "HTTP 500: broken invariant"),
    (RemoteError("KeyError", "inventory broke"), "ERROR", "a service this request needs failed"),
    (RuntimeError("a bug"), "ERROR", "unhandled error in HTTP handler"),
    (NotFound("No order with id x."), None, None),
    (InvalidInput("bad", details={"lines": ["Missing."]}), None, None),
    (MethodNotAllowed(), None, None),
])
def test_our_failures_are_logged_once_and_client_errors_are_left_to_the_trace(error, level, text, caplog):
    handler = JsonHttpHandler("POST", "/orders")
    with caplog.at_level(logging.INFO, logger="services.common.http.front_door"):
        assert handler.error_response(error).status_code == handler.response_from_exception(error).status_code
    logged = [(record.levelname, record.getMessage()) for record in caplog.records
              if record.name == "services.common.http.front_door"]
    if level is None:
        assert logged == []
    else:
        assert len(logged) == 1 and logged[0][0] == level and logged[0][1].startswith(text), logged


def test_building_the_response_after_the_commit_cannot_fail():
    """A header werkzeug refuses is left out (and logged), not turned into a 500 for a change already made."""
    handler = JsonHttpHandler("POST", "/products")
    response = handler.response_from_result((201, {"Location": "/products/NL-1\n", "X-Other": "fine"},
                                             {"sku": "NL-1\n"}))
    assert response.status_code == 201
    assert json.loads(response.get_data()) == {"sku": "NL-1\n"}
    assert "Location" not in response.headers and response.headers["X-Other"] == "fine"


def test_rpc_replies_carry_no_driver_text():
    """An error a method did not expect reaches the caller typed, naming only its type."""
    from types import SimpleNamespace

    from sqlalchemy.exc import DataError

    from services.common.errors import InternalError
    from services.common.messaging.rpc import Rpc

    replies = []
    entrypoint = Rpc()
    entrypoint.container = SimpleNamespace(service_name="inventory")
    entrypoint.rpc_consumer = SimpleNamespace(handle_result=lambda message, result, exc_info: replies.append(
        exc_info) or (result, exc_info))
    error = DataError("UPDATE products SET on_hand=on_hand + %(q)s", {"q": 2 ** 40}, Exception("integer out of range"))
    entrypoint.handle_result("message", None, None, (DataError, error, None))
    entrypoint.handle_result("message", None, None, (OperationalError, OperationalError("SELECT 1", {}, Exception(
        "could not connect")), None))
    (_, internal, _), (_, unavailable, _) = replies
    assert isinstance(internal, InternalError) and "UPDATE" not in str(internal) and "range" not in str(internal)
    assert internal.details == {"reason": "DataError"}
    assert isinstance(unavailable, ServiceUnavailable) and "SELECT" not in str(unavailable)
