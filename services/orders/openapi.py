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

from .schemas import (
    CancelOrderSchema, ErrorSchema, HealthSchema, IdempotencyHeaderSchema, ListOrdersSchema,
    NewProductSchema, OrderPageSchema, OrderSchema, ProductChangesSchema, ProductListSchema, ProductSchema,
    ReadinessSchema, RestockSchema, SKU_PATTERN, place_order_schema,
)

VERSION = "1.0.0"

ERRORS = {
    "BadRequest": (400, "The body is not JSON (malformed_json) or breaks the schema (invalid_input); "
                        "details names each field."),
    "Unauthorized": (401, "No admin token, or a wrong one (unauthorized)."),
    "Forbidden": (403, "Admin operations are switched off: no ADMIN_TOKEN configured (forbidden)."),
    "NotFound": (404, "No such route, order or product (not_found)."),
    "MethodNotAllowed": (405, "The path exists but not with this method (method_not_allowed); see Allow."),
    "Conflict": (409, "Valid, but it clashes with the current state (conflict)."),
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
refused. Catalogue writes need `Authorization: Bearer <ADMIN_TOKEN>`.
Browsers may call from the origins in `CORS_ALLOWED_ORIGINS` (none by default);
`OPTIONS` on any path answers a CORS preflight.
"""


def _json(schema_ref, description):
    return {"description": description, "content": {"application/json": {"schema": schema_ref}}}


def _errors(*names):
    return {str(ERRORS[name][0]): {"$ref": "#/components/responses/{}".format(name)} for name in names}


def _path_param(name, description, pattern=None):
    schema = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"in": "path", "name": name, "required": True, "description": description, "schema": schema}


ORDER_ID = _path_param("order_id", "The order's id (a UUID).")
SKU = dict(_path_param("sku", "The product's sku.", SKU_PATTERN), example="WIDGET-1")
# The skus are those of the demo catalogue (scripts/seed.py).
EXAMPLES = {
    "PlaceOrder": {"customer_email": "ann@example.com",
                   "lines": [{"sku": "WIDGET-1", "quantity": 2}, {"sku": "GIZMO-1", "quantity": 1}]},
    "CancelOrder": {"reason": "ordered by mistake"},
    "NewProduct": {"sku": "SPROCKET-1", "name": "Sprocket", "price": 1250, "stock": 40},
    "ProductChanges": {"price": 1799, "active": True},
    "Restock": {"quantity": 50},
}
ADMIN = [{"adminToken": []}]
COMMON = ("MethodNotAllowed",)
WITH_BODY = ("BadRequest", "PayloadTooLarge", "UnsupportedMediaType")
ADMIN_ERRORS = ("Unauthorized", "Forbidden")
UPSTREAM = ("BadGateway", "ServiceUnavailable")


def build_spec(max_line_quantity=1000, max_order_lines=100):
    spec = APISpec(title="Orders API", version=VERSION, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION})
    # what a JSON Schema can say beyond the fields themselves
    extra = {"ProductChanges": {"minProperties": 1}}
    for name, schema in (("Error", ErrorSchema), ("Order", OrderSchema), ("OrderPage", OrderPageSchema),
                         ("Product", ProductSchema), ("ProductList", ProductListSchema),
                         ("Health", HealthSchema), ("Readiness", ReadinessSchema),
                         ("PlaceOrder", place_order_schema(max_line_quantity, max_order_lines)),
                         ("CancelOrder", CancelOrderSchema), ("NewProduct", NewProductSchema),
                         ("ProductChanges", ProductChangesSchema), ("Restock", RestockSchema)):
        spec.components.schema(name, extra.get(name), schema=schema)
    for name, (_, description) in ERRORS.items():
        spec.components.response(name, _json({"$ref": "#/components/schemas/Error"}, description))
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer",
                                                   "description": "The ADMIN_TOKEN of the deployment."})

    def ref(name):
        return {"$ref": "#/components/schemas/{}".format(name)}

    def body(name, required=True):
        return {"required": required,
                "content": {"application/json": {"schema": ref(name), "example": EXAMPLES[name]}}}

    spec.path(path="/orders", operations={
        "post": {
            "operationId": "placeOrder", "tags": ["orders"],
            "summary": "Place an order (answered at once as pending; inventory decides later).",
            "description": "Prices are taken from the catalogue at placement. With an Idempotency-Key "
                           "the same key and the same body return the first answer again, with the same "
                           "status and no second order; the same key with another body is a 409. Keys "
                           "are kept for IDEMPOTENCY_KEY_TTL seconds.",
            "parameters": [{"in": "header", "schema": IdempotencyHeaderSchema}],
            "requestBody": body("PlaceOrder"),
            "responses": {"202": {**_json(ref("Order"), "The order, pending."), "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The order's URL."},
                "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true", "false"]},
                                        "description": "Sent with an Idempotency-Key: whether this "
                                                       "is the stored answer of an earlier request."}}},
                          **_errors("Conflict", *WITH_BODY, *COMMON)},
        },
        "get": {
            "operationId": "listOrders", "tags": ["orders"],
            "summary": "Orders, newest first, a page at a time.",
            "description": "Follow next_cursor until it is null. Orders placed while paging never "
                           "make a page repeat or skip an order.",
            "parameters": [{"in": "query", "schema": ListOrdersSchema}],
            "responses": {"200": _json(ref("OrderPage"), "A page of orders."),
                          **_errors("BadRequest", *COMMON)},
        },
    })
    spec.path(path="/orders/{order_id}", parameters=[ORDER_ID], operations={"get": {
        "operationId": "getOrder", "tags": ["orders"],
        "summary": "One order: lines, prices at placement, total, status, timestamps, history.",
        "responses": {"200": _json(ref("Order"), "The order."), **_errors("BadRequest", "NotFound", *COMMON)},
    }})
    spec.path(path="/orders/{order_id}/cancel", parameters=[ORDER_ID], operations={"post": {
        "operationId": "cancelOrder", "tags": ["orders"],
        "summary": "Cancel a pending or confirmed order (its stock is released).",
        "requestBody": body("CancelOrder", required=False),
        "responses": {"200": _json(ref("Order"), "The cancelled order."),
                      **_errors("NotFound", "Conflict", *WITH_BODY, *COMMON)},
    }})
    spec.path(path="/products", operations={
        "get": {
            "operationId": "listProducts", "tags": ["catalogue"],
            "summary": "The catalogue with live stock, from inventory.",
            "responses": {"200": _json(ref("ProductList"), "Every product."),
                          **_errors("BadRequest", *UPSTREAM, *COMMON)},
        },
        "post": {
            "operationId": "createProduct", "tags": ["catalogue"], "security": ADMIN,
            "summary": "Add a product (admin).",
            "requestBody": body("NewProduct"),
            "responses": {"201": _json(ref("Product"), "The new product."),
                          **_errors(*ADMIN_ERRORS, "Conflict", *WITH_BODY, *UPSTREAM, *COMMON)},
        },
    })
    spec.path(path="/products/{sku}", parameters=[SKU], operations={
        "get": {
            "operationId": "getProduct", "tags": ["catalogue"],
            "summary": "One product with live stock, from inventory.",
            "responses": {"200": _json(ref("Product"), "The product."),
                          **_errors("BadRequest", "NotFound", *UPSTREAM, *COMMON)},
        },
        "patch": {
            "operationId": "updateProduct", "tags": ["catalogue"], "security": ADMIN,
            "summary": "Change a product's name, price or active flag (admin).",
            "requestBody": body("ProductChanges"),
            "responses": {"200": _json(ref("Product"), "The product as changed."),
                          **_errors(*ADMIN_ERRORS, "NotFound", *WITH_BODY, *UPSTREAM, *COMMON)},
        },
    })
    spec.path(path="/products/{sku}/restock", parameters=[SKU], operations={"post": {
        "operationId": "restockProduct", "tags": ["catalogue"], "security": ADMIN,
        "summary": "Add units to a product's stock on hand (admin).",
        "requestBody": body("Restock"),
        "responses": {"200": _json(ref("Product"), "The product with its new stock."),
                      **_errors(*ADMIN_ERRORS, "NotFound", *WITH_BODY, *UPSTREAM, *COMMON)},
    }})
    spec.path(path="/health", operations={"get": {
        "operationId": "health", "tags": ["operations"],
        "summary": "Liveness: answers while the process is up.",
        "responses": {"200": _json(ref("Health"), "Up."), **_errors(*COMMON)},
    }})
    spec.path(path="/ready", operations={"get": {
        "operationId": "ready", "tags": ["operations"],
        "summary": "Readiness: broker and database reachable, inventory answers a ping.",
        "responses": {"200": _json(ref("Readiness"), "Ready."),
                      "503": _json(ref("Readiness"), "Not ready; checks says what fails."),
                      **_errors(*COMMON)},
    }})
    spec.path(path="/metrics", operations={"get": {
        "operationId": "metrics", "tags": ["operations"],
        "summary": "Prometheus metrics of this process (docs/observability.md).",
        "responses": {"200": {"description": "Prometheus text exposition format 0.0.4.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_errors(*COMMON)},
    }})
    spec.path(path="/openapi.json", operations={"get": {
        "operationId": "openapi", "tags": ["operations"],
        "summary": "This document.",
        "responses": {"200": {"description": "The OpenAPI 3 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors(*COMMON)},
    }})
    return spec


@functools.lru_cache(maxsize=8)
def _document(max_line_quantity, max_order_lines):
    return json.dumps(build_spec(max_line_quantity, max_order_lines).to_dict())


def openapi_document(config):
    """The document for this deployment's limits (built once per set of limits)."""
    return json.loads(_document(int(config.get("MAX_LINE_QUANTITY") or 1000),
                                int(config.get("MAX_ORDER_LINES") or 100)))
