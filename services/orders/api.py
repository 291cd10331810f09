"""The HTTP API of the orders service: the system's front door.

Handlers only translate between HTTP and the service's own methods (or
inventory's RPC for the catalogue); every rule lives in those methods and the
domain, so HTTP and RPC behave alike. Every body, query string and header a
client controls is validated by a schema from ``schemas.py``, the same one the
OpenAPI document (``openapi.py``) is generated from.
"""
import hmac
from urllib.parse import quote

import eventlet
from kombu import Connection
from sqlalchemy import text

from services.common.errors import NotFound
from services.common.http import (
    Forbidden, Unauthorized, http, json_response, read_headers, read_json, read_query,
)
from services.common.rpc import TimedRpcProxy
from services.common.validation import order_id_or_none

from .openapi import openapi_document
from .schemas import (
    CancelOrderSchema, EmptyQuerySchema, IdempotencyHeaderSchema, ListOrdersSchema, NewProductSchema,
    ProductChangesSchema, ProductSchema, RestockSchema, is_sku,
)

# inventory's answers are passed on as documented, nothing more
product_schema = ProductSchema()
# built once: a schema instance keeps no state between loads, and building
# one per request showed in the profile of the busiest route
empty_query_schema = EmptyQuerySchema()
idempotency_header_schema = IdempotencyHeaderSchema()

DEFAULT_READY_TIMEOUT = 1.0


class ReadinessRpcProxy(TimedRpcProxy):
    """Inventory as /ready sees it: a ping that must answer within READY_TIMEOUT."""

    def setup(self):
        if self.timeout is None:
            self.timeout = float(self.container.config.get("READY_TIMEOUT") or DEFAULT_READY_TIMEOUT)
        super().setup()


def check_broker(amqp_uri, timeout):
    """'ok' if an AMQP connection (handshake included) opens within ``timeout``."""
    try:
        with eventlet.Timeout(timeout):
            with Connection(amqp_uri, connect_timeout=timeout) as connection:
                connection.connect()
        return "ok"
    except eventlet.Timeout:
        return "no answer within {}s".format(timeout)
    except Exception as exc:  # any failure to connect is "not ready", whatever its type
        return "unreachable: {}".format(type(exc).__name__)


class HttpApi:
    # orders ---------------------------------------------------------------------

    @http("POST", "/orders")
    def http_place_order(self, request):
        read_query(request, empty_query_schema)
        headers = read_headers(request, idempotency_header_schema)
        body = read_json(request)
        key = headers.get("idempotency_key")
        if key is None:
            status, order, replayed = 202, self.place_order(body), False
        else:
            status, order, replayed = self.place_order_once(body, key)
        response_headers = {"Location": "/orders/{}".format(quote(str(order["id"]), safe=""))}
        if key is not None:
            response_headers["Idempotent-Replayed"] = "true" if replayed else "false"
        return status, order, response_headers

    @http("GET", "/orders")
    def http_list_orders(self, request):
        return self.find_orders(read_query(request, ListOrdersSchema()))

    @http("GET", "/orders/<string:order_id>")
    def http_get_order(self, request, order_id):
        read_query(request, empty_query_schema)
        return self.read_order(self._known_order_id(order_id))

    @http("POST", "/orders/<string:order_id>/cancel")
    def http_cancel_order(self, request, order_id):
        read_query(request, empty_query_schema)
        order_id = self._known_order_id(order_id)
        data = read_json(request, CancelOrderSchema(), optional=True)
        return self.change_status(order_id, "cancelled", data["reason"])

    @staticmethod
    def _known_order_id(order_id):
        """Ids are UUIDs: anything else cannot name an order, so it is a 404 without a query."""
        known = order_id_or_none(order_id)
        if known is None:
            raise NotFound("No order with id {}.".format(order_id[:80]), details={"order_id": ["Not an order id."]})
        return known

    # catalogue --------------------------------------------------------------------

    @http("GET", "/products")
    def http_list_products(self, request):
        read_query(request, empty_query_schema)
        return {"products": product_schema.dump(self.inventory.list_products(), many=True)}

    @http("GET", "/products/<string:sku>")
    def http_get_product(self, request, sku):
        read_query(request, empty_query_schema)
        return product_schema.dump(self.inventory.get_product(self._known_sku(sku)))

    @http("POST", "/products")
    def http_create_product(self, request):
        self._require_admin(request)
        read_query(request, empty_query_schema)
        data = read_json(request, NewProductSchema())
        product = product_schema.dump(
            self.inventory.create_product(data["sku"], data["name"], data["price"], data["stock"]))
        # the sku was checked before anything was written; quoted all the same,
        # so building this header cannot fail after the commit
        return 201, product, {"Location": "/products/{}".format(quote(str(product["sku"]), safe=""))}

    @http("POST", "/products/<string:sku>/restock")
    def http_restock(self, request, sku):
        self._require_admin(request)
        read_query(request, empty_query_schema)
        sku = self._known_sku(sku)
        data = read_json(request, RestockSchema())
        return product_schema.dump(self.inventory.restock(sku, data["quantity"]))

    @http("PATCH", "/products/<string:sku>")
    def http_update_product(self, request, sku):
        self._require_admin(request)
        read_query(request, empty_query_schema)
        sku = self._known_sku(sku)
        changes = read_json(request, ProductChangesSchema())
        return product_schema.dump(self.inventory.update_product(sku, **changes))

    @staticmethod
    def _known_sku(sku):
        # checked here so inventory (and its database) never sees a string
        # that cannot be a sku (NUL bytes, 10 kB, ...)
        if not is_sku(sku):
            raise NotFound("No product with sku {}.".format(sku[:80]), details={"sku": ["Not a valid sku."]})
        return sku

    def _require_admin(self, request):
        """Catalogue writes need ``Authorization: Bearer <ADMIN_TOKEN>``.

        Without a configured token nobody is an admin (403), so a deployment
        that forgot to set one is closed, not open. The comparison takes the
        same time wherever the strings differ.
        """
        expected = str(self.config.get("ADMIN_TOKEN") or "")
        if not expected:
            raise Forbidden("Catalogue changes are disabled: no ADMIN_TOKEN is configured.",
                            details={"Authorization": ["Admin operations are switched off."]})
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("This needs an admin token: Authorization: Bearer <token>.",
                               details={"Authorization": ["Missing or not a Bearer token."]})
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized("The admin token is not valid.", details={"Authorization": ["Wrong token."]})

    # operations --------------------------------------------------------------------

    @http("GET", "/health", ops=True)
    def http_health(self, request):
        return {"status": "ok", "service": self.name}

    @http("GET", "/ready", ops=True)
    def http_ready(self, request):
        """200 only if this instance can do its work now: broker, database, inventory."""
        timeout = float(self.config.get("READY_TIMEOUT") or DEFAULT_READY_TIMEOUT)
        checks = {"broker": check_broker(self.config["AMQP_URI"], timeout),
                  "database": self._check_database(timeout)}
        if checks["broker"] == "ok":
            checks["inventory"] = self._check_inventory()
        else:
            checks["inventory"] = "not checked: broker unreachable"
        ready = all(value == "ok" for value in checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not_ready", "checks": checks}

    def _check_database(self, timeout):
        try:
            with eventlet.Timeout(timeout):
                with self.db.get_session() as session:
                    session.execute(text("SELECT 1"))
            return "ok"
        except eventlet.Timeout:
            return "no answer within {}s".format(timeout)
        except Exception as exc:  # an unreachable database, whatever the driver raises
            return "unreachable: {}".format(type(exc).__name__)

    def _check_inventory(self):
        try:
            self.inventory_ping.ping()
            return "ok"
        except Exception as exc:  # ServiceUnavailable, or inventory failing
            return "no answer: {}".format(getattr(exc, "message", type(exc).__name__))

    @http("GET", "/openapi.json", ops=True)
    def http_openapi(self, request):
        return json_response(200, openapi_document(self.config))

