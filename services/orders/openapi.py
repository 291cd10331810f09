"""The OpenAPI 3 document of the orders HTTP API, generated from the schemas.

Request bodies, query strings and headers are described by the very
marshmallow schemas ``api.py`` validates with (through apispec's marshmallow
plugin), with the limits the running service was configured with, so the
document and the checks cannot disagree. Rules a JSON Schema cannot say (a
sku at most once per order) are in descriptions.
"""
import functools
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.common.http.openapi import (
    ErrorSchema, bearer_scheme, error_refs, error_responses, json_body, json_content as _json, path_param, ref,
)
from services.common.validation import SKU_PATTERN

from .schemas import (
    CancelOrderSchema, HealthSchema, IdempotencyHeaderSchema, ListOrdersSchema, OrderPageSchema, OrderSchema,
    ProductListSchema, ProductSchema, ReadinessSchema, place_order_schema,
)
from .settings import OrdersSettings

VERSION = "1.0.0"

ERRORS = {
    "BadRequest": (400, "The body is not JSON (malformed_json) or breaks the schema (invalid_input); "
                        "details names each field."),
    "Unauthorized": (401, "No bearer token, or one that is expired, not yet valid, badly signed or meant "
                          "for another issuer or audience (unauthorized); see WWW-Authenticate."),
    "Forbidden": (403, "The token may not do this: a customer named another customer, or the token "
                       "names no customer (forbidden); details names the field."),
    "NotFound": (404, "No such route, order or product (not_found)."),
    "MethodNotAllowed": (405, "The path exists but not with this method (method_not_allowed); see Allow."),
    "Conflict": (409, "Valid, but it clashes with the current state (conflict)."),
    "TooManyRequests": (429, "Too many orders from this customer, or unauthenticated attempts from this "
                             "address, in RATE_LIMIT_WINDOW seconds (rate_limited); see Retry-After."),
    "PayloadTooLarge": (413, "The body is larger than MAX_BODY_BYTES (payload_too_large)."),
    "UnsupportedMediaType": (415, "The body is not sent as application/json (unsupported_media_type)."),
    "BadGateway": (502, "A service this request needs failed unexpectedly (upstream_error)."),
    "ServiceUnavailable": (503, "A service this request needs did not answer in time (service_unavailable)."),
}

DESCRIPTION = """\
The front door of the order-processing system.

Every response is JSON. Every error has the shape
`{"error": code, "message": text, "details": {field: [messages]}}`; `error`
is a stable code, `message` is for people. Every response carries
`X-Request-ID` (sent back if the client sent a valid one), which follows the
request through every service and log line.

Money is integer cents. Unknown fields and unknown query parameters are
refused. Orders need `Authorization: Bearer <token>`, a JWT from the
deployment's identity provider: a customer sees and changes only their own
orders (another customer's order is a 404); a token with the `orders:admin`
scope acts for any customer. Catalogue reads, `/health`, `/ready` and
`/openapi.json` are public. Catalogue writes (new products, changes,
restock) are inventory's own admin API, on inventory's port
(`INVENTORY_WEB_SERVER_ADDRESS`), with the same tokens.
Browsers may call from the origins in `CORS_ALLOWED_ORIGINS` (none by default);
`OPTIONS` on any path answers a CORS preflight.
"""


def _errors(*names):
    return error_refs(ERRORS, *names)


ORDER_ID = path_param("order_id", "The order's id (a UUID).")
SKU = path_param("sku", "The product's sku.", SKU_PATTERN, example="WIDGET-1")
# The skus are those of the demo catalogue (scripts/seed.py).
EXAMPLES = {
    "PlaceOrder": {"customer_email": "ann@example.com",
                   "lines": [{"sku": "WIDGET-1", "quantity": 2}, {"sku": "GIZMO-1", "quantity": 1}]},
    "CancelOrder": {"reason": "ordered by mistake"},
}
CUSTOMER = [{"bearerAuth": []}]
PUBLIC = []
COMMON = ("MethodNotAllowed",)
WITH_BODY = ("BadRequest", "PayloadTooLarge", "UnsupportedMediaType")
CUSTOMER_ERRORS = ("Unauthorized", "Forbidden")
UPSTREAM = ("BadGateway", "ServiceUnavailable")


def build_spec(max_line_quantity=OrdersSettings.max_line_quantity,
               max_order_lines=OrdersSettings.max_order_lines):
    spec = APISpec(title="Orders API", version=VERSION, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION},
                   security=CUSTOMER)  # the default; public operations say security: []
    for name, schema in (("Error", ErrorSchema), ("Order", OrderSchema), ("OrderPage", OrderPageSchema),
                         ("Product", ProductSchema), ("ProductList", ProductListSchema),
                         ("Health", HealthSchema), ("Readiness", ReadinessSchema),
                         ("PlaceOrder", place_order_schema(max_line_quantity, max_order_lines)),
                         ("CancelOrder", CancelOrderSchema)):
        spec.components.schema(name, schema=schema)
    error_responses(spec, ERRORS)
    bearer_scheme(spec, "acts for any customer")

    def body(name, required=True):
        return json_body(name, EXAMPLES[name], required)

    spec.path(path="/orders", operations={
        "post": {
            "operationId": "placeOrder", "tags": ["orders"], "security": CUSTOMER,
            "summary": "Place an order (answered at once as pending; inventory decides later).",
            "description": "Prices are taken from the catalogue at placement. With an Idempotency-Key "
                           "the same key and the same body return the first answer again, with the same "
                           "status and no second order; the same key with another body is a 409. Keys "
                           "are kept for IDEMPOTENCY_KEY_TTL seconds and belong to the order's customer. "
                           "A customer's customer_email may be left out; another customer's is a 403. "
                           "An admin names the customer in customer_email.",
            "parameters": [{"in": "header", "schema": IdempotencyHeaderSchema}],
            "requestBody": body("PlaceOrder"),
            "responses": {"202": {**_json(ref("Order"), "The order, pending."), "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The order's URL."},
                "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true", "false"]},
                                        "description": "Sent with an Idempotency-Key: whether this "
                                                       "is the stored answer of an earlier request."}}},
                          "429": {**_json(ref("Error"), ERRORS["TooManyRequests"][1]), "headers": {
                              "Retry-After": {"schema": {"type": "integer"},
                                              "description": "Seconds until the next window."}}},
                          **_errors(*CUSTOMER_ERRORS, "Conflict", *WITH_BODY, *COMMON)},
        },
        "get": {
            "operationId": "listOrders", "tags": ["orders"], "security": CUSTOMER,
            "summary": "The caller's orders (an admin's: everyone's), newest first, a page at a time.",
            "description": "Follow next_cursor until it is null. Orders placed while paging never "
                           "make a page repeat or skip an order. customer_email filters for an admin; "
                           "a customer may only name themselves.",
            "parameters": [{"in": "query", "schema": ListOrdersSchema}],
            "responses": {"200": _json(ref("OrderPage"), "A page of orders."),
                          **_errors("BadRequest", *CUSTOMER_ERRORS, *COMMON)},
        },
    })
    spec.path(path="/orders/{order_id}", parameters=[ORDER_ID], operations={"get": {
        "operationId": "getOrder", "tags": ["orders"], "security": CUSTOMER,
        "summary": "One order: lines, prices at placement, total, status, timestamps, history.",
        "description": "Another customer's order is a 404, like a missing one.",
        "responses": {"200": _json(ref("Order"), "The order."),
                      **_errors("BadRequest", *CUSTOMER_ERRORS, "NotFound", *COMMON)},
    }})
    spec.path(path="/orders/{order_id}/cancel", parameters=[ORDER_ID], operations={"post": {
        "operationId": "cancelOrder", "tags": ["orders"], "security": CUSTOMER,
        "summary": "Cancel a pending or confirmed order (its stock is released).",
        "description": "Another customer's order is a 404, like a missing one.",
        "requestBody": body("CancelOrder", required=False),
        "responses": {"200": _json(ref("Order"), "The cancelled order."),
                      **_errors(*CUSTOMER_ERRORS, "NotFound", "Conflict", *WITH_BODY, *COMMON)},
    }})
    spec.path(path="/products", operations={
        "get": {
            "operationId": "listProducts", "tags": ["catalogue"], "security": PUBLIC,
            "summary": "The catalogue with live stock, from inventory.",
            "responses": {"200": _json(ref("ProductList"), "Every product."),
                          **_errors("BadRequest", *UPSTREAM, *COMMON)},
        },
    })
    spec.path(path="/products/{sku}", parameters=[SKU], operations={
        "get": {
            "operationId": "getProduct", "tags": ["catalogue"], "security": PUBLIC,
            "summary": "One product with live stock, from inventory.",
            "responses": {"200": _json(ref("Product"), "The product."),
                          **_errors("BadRequest", "NotFound", *UPSTREAM, *COMMON)},
        },
    })
    spec.path(path="/health", operations={"get": {
        "operationId": "health", "tags": ["operations"], "security": PUBLIC,
        "summary": "Liveness: answers while the process is up.",
        "responses": {"200": _json(ref("Health"), "Up."), **_errors(*COMMON)},
    }})
    spec.path(path="/ready", operations={"get": {
        "operationId": "ready", "tags": ["operations"], "security": PUBLIC,
        "summary": "Readiness: broker and database reachable (inventory is not needed to take orders).",
        "responses": {"200": _json(ref("Readiness"), "Ready."),
                      "503": _json(ref("Readiness"), "Not ready; checks says what fails."),
                      **_errors(*COMMON)},
    }})
    spec.path(path="/openapi.json", operations={"get": {
        "operationId": "openapi", "tags": ["operations"], "security": PUBLIC,
        "summary": "This document.",
        "responses": {"200": {"description": "The OpenAPI 3 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors(*COMMON)},
    }})
    return spec


@functools.lru_cache(maxsize=8)
def _document(max_line_quantity, max_order_lines):
    return json.dumps(build_spec(max_line_quantity, max_order_lines).to_dict())


def openapi_document(settings):
    """The document for this deployment's limits (``OrdersSettings``; built once per set of limits)."""
    return json.loads(_document(settings.max_line_quantity, settings.max_order_lines))
