"""The HTTP API of the orders service: the system's front door.

Handlers only translate between HTTP and the use cases in ``handlers.py``,
which they call explicitly in a unit of work (or inventory's read RPCs for
the catalogue); every rule lives in the use cases and the domain, so HTTP and RPC
behave alike. The routes are methods of ``HttpApi``, which ``OrdersService``
lists among its bases: nameko finds entrypoints on the service class. Every body, query string and header a
client controls is validated by a schema from ``schemas.py``, the same one the
OpenAPI document (``openapi.py``) is generated from.

Who may do what (``auth.py`` verifies the bearer token): a customer places,
reads, lists and cancels only their own orders; another customer's order is
a 404, as if it did not exist. A token with the admin scope may do all of
that for any customer. Catalogue reads, /health, /ready and /openapi.json
are public. Catalogue writes are not here: inventory owns the catalogue and
serves them itself (``services/inventory/http.py``), so orders' broker user
needs none of inventory's write methods.
"""
import logging
from urllib.parse import quote

from services.common.http.auth import BearerAuth, NotAuthenticated, normalise_email
from services.common.messaging.brokers import ssl_options
from services.common.errors import NotFound
from services.common.observability.health import check_broker, check_database, readiness
from services.common.http.front_door import Forbidden, http, json_response, read_headers, read_json, read_query
from services.common.validation import known_sku, order_id_or_none

from . import domain, handlers, ratelimit
from .openapi import openapi_document
from .schemas import CancelOrderSchema, EmptyQuerySchema, IdempotencyHeaderSchema, ListOrdersSchema, ProductSchema

log = logging.getLogger(__name__)

# inventory's answers are passed on as documented, nothing more
product_schema = ProductSchema()
# built once: a schema instance keeps no state between loads, and building
# one per request showed in the profile of the busiest route
empty_query_schema = EmptyQuerySchema()
idempotency_header_schema = IdempotencyHeaderSchema()


class HttpApi:
    auth = BearerAuth()

    # who is calling ---------------------------------------------------------------

    def _caller(self, request):
        """The verified identity of the request's bearer token (401 without one)."""
        return self.auth.identity(request.headers.get("Authorization"))

    def _customer(self, request):
        """The caller, who must be an admin or have an email to own orders by."""
        identity = self._caller(request)
        if not identity.admin and not identity.email:
            raise Forbidden("The token names no customer (no verified email).",
                            details={"Authorization": ["The token has no verified email claim."]})
        return identity

    def _rate_limit(self, bucket, limit):
        if limit <= 0:  # switched off: no unit of work at all
            return
        refused = None
        with self.uow as uow:
            try:
                ratelimit.hit(uow.session, bucket, limit, self.settings.rate_limit_window)
            except ratelimit.TooManyRequests as exc:
                refused = exc  # committed with the block: a refused attempt counts too
        if refused is not None:
            raise refused

    @staticmethod
    def _owns(identity, order):
        return identity.admin or normalise_email(order["customer_email"]) == identity.email

    # orders ---------------------------------------------------------------------

    @http("POST", "/orders")
    def http_place_order(self, request):
        """An order for the token's customer; an admin names the customer in the body."""
        try:
            identity = self._customer(request)
        except NotAuthenticated:
            # unauthenticated attempts are limited per client address (token guessing)
            self._rate_limit("address:{}".format(request.remote_addr), self.settings.anonymous_rate_limit)
            raise
        self._rate_limit("customer:{}".format(identity.subject), self.settings.order_rate_limit)
        read_query(request, empty_query_schema)
        headers = read_headers(request, idempotency_header_schema)
        body = read_json(request)
        if not identity.admin:
            claimed = body.get("customer_email", identity.email)
            if isinstance(claimed, str) and normalise_email(claimed) != identity.email:
                raise Forbidden("Orders are placed for the token's own customer.",
                                details={"customer_email": ["Must be the token's email or left out."]})
            if isinstance(claimed, str):
                body["customer_email"] = identity.email
        key = headers.get("idempotency_key")
        data = handlers.order_request(body, self.settings)
        if key is None:
            with self.uow as uow:
                status, order, replayed = 202, handlers.place_order(uow, data, self.correlation_id), False
        else:
            status, order, replayed = handlers.place_order_once(
                self.uow, data, key, self.settings.idempotency_key_ttl, self.correlation_id)
        if not replayed:
            log.info("order %s placed (%d lines, total %d)", order["id"], len(order["lines"]), order["total"])
        response_headers = {"Location": "/orders/{}".format(quote(str(order["id"]), safe=""))}
        if key is not None:
            response_headers["Idempotent-Replayed"] = "true" if replayed else "false"
        return status, response_headers, order

    @http("GET", "/orders")
    def http_list_orders(self, request):
        """A customer's own orders; an admin's view of everyone's (customer_email filters)."""
        identity = self._customer(request)
        query = read_query(request, ListOrdersSchema())
        if not identity.admin:
            if normalise_email(query.get("customer_email", identity.email)) != identity.email:
                raise Forbidden("Customers list only their own orders.",
                                details={"customer_email": ["Must be the token's email or left out."]})
            query["customer_email"] = identity.email
        with self.uow.read_only() as uow:
            return handlers.find_orders(uow, query)

    @http("GET", "/orders/<string:order_id>")
    def http_get_order(self, request, order_id):
        identity = self._customer(request)
        read_query(request, empty_query_schema)
        with self.uow.read_only() as uow:
            order = handlers.read_order(uow, self._known_order_id(order_id))
        if not self._owns(identity, order):
            raise handlers.order_not_found(order["id"])  # the same answer as for no order at all
        return order

    @http("POST", "/orders/<string:order_id>/cancel")
    def http_cancel_order(self, request, order_id):
        identity = self._customer(request)
        read_query(request, empty_query_schema)
        order_id = self._known_order_id(order_id)
        data = read_json(request, CancelOrderSchema(), optional=True)
        with self.uow as uow:
            return handlers.change_status(uow, order_id, domain.CANCELLED, data["reason"],
                                          owner=None if identity.admin else identity.email)

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
        return product_schema.dump(self.inventory.get_product(known_sku(sku)))

    # operations --------------------------------------------------------------------

    @http("GET", "/health", ops=True)
    def http_health(self, request):
        return {"status": "ok", "service": self.name}

    @http("GET", "/ready", ops=True)
    def http_ready(self, request):
        """200 only if this instance can take an order now: broker and database.

        Inventory is not checked: orders are accepted while it is down (they
        wait for it), so its outage must not take orders out of a load balancer.
        """
        timeout = self.settings.ready_timeout
        return readiness({"broker": check_broker(self.config["AMQP_URI"], timeout, ssl_options(self.config)),
                          "database": check_database(self.db.get_session, timeout)})

    @http("GET", "/openapi.json", ops=True)
    def http_openapi(self, request):
        return json_response(200, openapi_document(self.settings))

