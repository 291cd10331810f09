"""Inventory's admin HTTP API: the catalogue's writes, served by the service that owns the catalogue.

Every route needs a bearer token with the admin scope (``JWT_ADMIN_SCOPE``),
verified exactly as orders verifies its tokens (``services.common.http.auth``,
the same ``JWT_*`` configuration). The handlers run inventory's own use
cases in a unit of work, as the RPC entrypoints do; no other service is
involved, so no other service's broker user needs inventory's write
methods (those answer on the broker to the operator user alone).

Served on ``INVENTORY_WEB_SERVER_ADDRESS`` (config.yaml; unset: no HTTP).
The public catalogue reads stay on orders' front door.
"""
import logging
from urllib.parse import quote

from services.common.http.auth import BearerAuth
from services.common.http.front_door import http, json_response, read_json, read_query
from services.common.validation import known_sku

from . import handlers
from .openapi import openapi_document
from .schemas import EmptyQuerySchema, NewProductSchema, ProductChangesBody, RestockSchema

log = logging.getLogger(__name__)

empty_query_schema = EmptyQuerySchema()


class AdminHttpApi:
    web_server_address_key = "INVENTORY_WEB_SERVER_ADDRESS"
    auth = BearerAuth()

    def _admin(self, request):
        """The caller, who must hold the admin scope: 401 without a valid token, 403 without the scope."""
        return self.auth.require_admin(self.auth.identity(request.headers.get("Authorization")))

    @http("GET", "/products")
    def http_list_products(self, request):
        self._admin(request)
        read_query(request, empty_query_schema)
        with self.uow.read_only() as uow:
            return {"products": handlers.list_products(uow)}

    @http("GET", "/products/<string:sku>")
    def http_get_product(self, request, sku):
        self._admin(request)
        read_query(request, empty_query_schema)
        with self.uow.read_only() as uow:
            return handlers.get_product(uow, known_sku(sku))

    @http("POST", "/products")
    def http_create_product(self, request):
        identity = self._admin(request)
        read_query(request, empty_query_schema)
        data = read_json(request, NewProductSchema())
        with self.uow as uow:
            product = handlers.create_product(uow, data)
        log.info("product %s created by %s", product["sku"], identity.subject)
        # the sku was checked before anything was written; quoted all the same,
        # so building this header cannot fail after the commit
        return 201, {"Location": "/products/{}".format(quote(str(product["sku"]), safe=""))}, product

    @http("PATCH", "/products/<string:sku>")
    def http_update_product(self, request, sku):
        identity = self._admin(request)
        read_query(request, empty_query_schema)
        sku = known_sku(sku)
        changes = read_json(request, ProductChangesBody())
        with self.uow as uow:
            product = handlers.update_product(uow, sku, changes)
        log.info("product %s changed (%s) by %s", sku, ", ".join(sorted(changes)), identity.subject)
        return product

    @http("POST", "/products/<string:sku>/restock")
    def http_restock(self, request, sku):
        identity = self._admin(request)
        read_query(request, empty_query_schema)
        sku = known_sku(sku)
        data = read_json(request, RestockSchema())
        with self.uow as uow:
            product = handlers.restock(uow, sku, data["quantity"])
        log.info("product %s restocked by %d by %s", sku, data["quantity"], identity.subject)
        return product

    @http("GET", "/openapi.json", ops=True)
    def http_openapi(self, request):
        return json_response(200, openapi_document())
