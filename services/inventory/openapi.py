"""The OpenAPI 3 document of inventory's admin HTTP API, generated from the schemas it validates with."""
import functools
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.common.http.openapi import (
    ErrorSchema, bearer_scheme, error_refs, error_responses, json_body, json_content, path_param, ref,
)
from services.common.validation import SKU_PATTERN

from .schemas import NewProductSchema, ProductChangesSchema, ProductListSchema, ProductSchema, RestockSchema

VERSION = "1.0.0"

ERRORS = {
    "BadRequest": (400, "The body is not JSON (malformed_json) or breaks the schema (invalid_input), or "
                        "the stock would pass its maximum; details names each field."),
    "Unauthorized": (401, "No bearer token, or one that is expired, not yet valid, badly signed or meant "
                          "for another issuer or audience (unauthorized); see WWW-Authenticate."),
    "Forbidden": (403, "The token lacks the admin scope (insufficient_scope)."),
    "NotFound": (404, "No such route or product (not_found)."),
    "MethodNotAllowed": (405, "The path exists but not with this method (method_not_allowed); see Allow."),
    "Conflict": (409, "A product with this sku exists (conflict)."),
    "PayloadTooLarge": (413, "The body is larger than MAX_BODY_BYTES (payload_too_large)."),
    "UnsupportedMediaType": (415, "The body is not sent as application/json (unsupported_media_type)."),
    "ServiceUnavailable": (503, "Inventory's database did not answer, or the identity provider's keys "
                                "could not be fetched (service_unavailable)."),
}

DESCRIPTION = """\
Inventory's admin API: the catalogue's writes, served by the service that owns
the catalogue. Every route but this document needs a bearer token (the same
JWTs as the orders API) with the admin scope (`orders:admin` by default).
Customers read the catalogue on the orders API (`GET /products`).

Every error has the shape `{"error": code, "message": text, "details": {field: [messages]}}`.
Money is integer cents. Unknown fields and unknown query parameters are refused.
"""

EXAMPLES = {
    "NewProduct": {"sku": "SPROCKET-1", "name": "Sprocket", "price": 1250, "stock": 40},
    "ProductChanges": {"price": 1799, "active": True},
    "Restock": {"quantity": 50},
}
ADMIN = [{"bearerAuth": []}]
COMMON = ("MethodNotAllowed", "ServiceUnavailable")
AUTH = ("Unauthorized", "Forbidden")
WITH_BODY = ("BadRequest", "PayloadTooLarge", "UnsupportedMediaType")


def _errors(*names):
    return error_refs(ERRORS, *names)


def build_spec():
    spec = APISpec(title="Inventory admin API", version=VERSION, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()], info={"description": DESCRIPTION}, security=ADMIN)
    for name, schema, extra in (("Error", ErrorSchema, None), ("Product", ProductSchema, None),
                                ("ProductList", ProductListSchema, None),
                                ("NewProduct", NewProductSchema, None),
                                ("ProductChanges", ProductChangesSchema, {"minProperties": 1}),
                                ("Restock", RestockSchema, None)):
        spec.components.schema(name, extra, schema=schema)
    error_responses(spec, ERRORS)
    bearer_scheme(spec, "is needed for every route of this API")

    def body(name):
        return json_body(name, EXAMPLES[name])

    sku = path_param("sku", "The product's sku.", SKU_PATTERN, example="WIDGET-1")
    spec.path(path="/products", operations={
        "get": {
            "operationId": "adminListProducts", "tags": ["catalogue"], "security": ADMIN,
            "summary": "Every product with its stock (admin).",
            "responses": {"200": json_content(ref("ProductList"), "Every product."),
                          **_errors("BadRequest", *AUTH, *COMMON)},
        },
        "post": {
            "operationId": "createProduct", "tags": ["catalogue"], "security": ADMIN,
            "summary": "Add a product (admin); orders learns of it by event.",
            "requestBody": body("NewProduct"),
            "responses": {"201": {**json_content(ref("Product"), "The new product."), "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The product's URL on this API."}}},
                          **_errors(*AUTH, "Conflict", *WITH_BODY, *COMMON)},
        },
    })
    spec.path(path="/products/{sku}", parameters=[sku], operations={
        "get": {
            "operationId": "adminGetProduct", "tags": ["catalogue"], "security": ADMIN,
            "summary": "One product with its stock (admin).",
            "responses": {"200": json_content(ref("Product"), "The product."),
                          **_errors("BadRequest", *AUTH, "NotFound", *COMMON)},
        },
        "patch": {
            "operationId": "updateProduct", "tags": ["catalogue"], "security": ADMIN,
            "summary": "Change a product's name, price or active flag (admin); orders learns of it by event.",
            "requestBody": body("ProductChanges"),
            "responses": {"200": json_content(ref("Product"), "The product as changed."),
                          **_errors(*AUTH, "NotFound", *WITH_BODY, *COMMON)},
        },
    })
    spec.path(path="/products/{sku}/restock", parameters=[sku], operations={"post": {
        "operationId": "restockProduct", "tags": ["catalogue"], "security": ADMIN,
        "summary": "Add units to a product's stock on hand (admin).",
        "requestBody": body("Restock"),
        "responses": {"200": json_content(ref("Product"), "The product with its new stock."),
                      **_errors(*AUTH, "NotFound", *WITH_BODY, *COMMON)},
    }})
    spec.path(path="/openapi.json", operations={"get": {
        "operationId": "openapi", "tags": ["operations"], "security": [],
        "summary": "This document.",
        "responses": {"200": {"description": "The OpenAPI 3 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      **_errors("MethodNotAllowed")},
    }})
    return spec


@functools.lru_cache(maxsize=1)
def _document():
    return json.dumps(build_spec().to_dict())


def openapi_document():
    return json.loads(_document())
