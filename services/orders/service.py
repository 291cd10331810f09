"""The orders service: the order lifecycle, over RPC, HTTP and events.

Placing an order is one local transaction: the order, its lines at today's
prices (from orders' own copy of the catalogue) and an ``order_created``
event in the outbox. Inventory answers by event; the order becomes confirmed
or rejected when that answer arrives, whenever that is (docs/saga.md).

Entrypoints only: RPC and events here, HTTP in ``http.py``; each validates
its input and calls a use case from ``handlers.py`` in a unit of work.
"""
import logging

from nameko.dependency_providers import Config
from nameko.timer import timer

from services.common.messaging.consumers import InboxRetention
from services.common.observability.correlation import CorrelationId
from services.common.db.database import ServiceDatabase
from services.common.messaging.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.observability.metrics import Metrics
from services.common.messaging.outbox import Outbox
from services.common.messaging.rpc import TimedRpcProxy, rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.observability.telemetry import Telemetry
from services.common.observability.tracing import Tracer
from services.common.uow import UnitOfWork, handles
from services.common.validation import order_id_or_none

from . import domain, handlers, ratelimit
from .http import HttpApi
from .models import Order, OrdersBase, OutboxMessage, ProcessedEvent
from .schemas import (
    CancelOrderSchema, ListOrdersSchema, ProductChangedSchema, StockRejectedSchema, StockReservedSchema,
)
from .settings import IDEMPOTENCY_PURGE_INTERVAL, Settings

log = logging.getLogger(__name__)

cancel_order_schema = CancelOrderSchema()
# inventory's answers arrive once per order: their read schemas are built once
stock_reserved_schema = StockReservedSchema()
stock_rejected_schema = StockRejectedSchema()
product_changed_schema = ProductChangedSchema()


class OrdersService(HttpApi, DeadLetterRpc, InboxRetention):
    name = "orders"

    config = Config()
    settings = Settings()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(OrdersBase)
    outbox = Outbox(OrdersBase, OutboxMessage)
    uow = UnitOfWork(ProcessedEvent)
    inventory = TimedRpcProxy("inventory")
    correlation_id = CorrelationId()
    tracer = Tracer()
    telemetry = Telemetry()
    metrics = Metrics(OrdersBase, outbox=OutboxMessage,
                      counts=[("orders_by_status", "Orders by status.", Order.status)])
    shutdown = GracefulShutdown()

    @rpc(expected_exceptions=InvalidInput)
    def create_order(self, customer_email, lines):
        data = handlers.order_request({"customer_email": customer_email, "lines": lines}, self.settings)
        with self.uow as uow:
            order = handlers.place_order(uow, data, self.correlation_id)
        log.info("order %s placed (%d lines, total %d)", order["id"], len(order["lines"]), order["total"])
        return order

    @rpc(expected_exceptions=NotFound)
    def get_order(self, order_id):
        with self.uow.read_only() as uow:
            return handlers.read_order(uow, _known_order_id(order_id))

    @rpc(expected_exceptions=InvalidInput)
    def list_orders(self, status=None, customer_email=None, limit=50):
        query = {key: value for key, value in
                 (("status", status), ("customer_email", customer_email), ("limit", limit)) if value is not None}
        query = load_input(ListOrdersSchema(), query)
        with self.uow.read_only() as uow:
            return handlers.find_orders(uow, query)["orders"]

    @rpc(expected_exceptions=(InvalidInput, NotFound, Conflict))
    def cancel_order(self, order_id, reason=None):
        """Cancel an order; ``reason`` obeys the same rules as over HTTP."""
        order_id = _known_order_id(order_id)
        data = load_input(cancel_order_schema, {} if reason is None else {"reason": reason})
        with self.uow as uow:
            return handlers.change_status(uow, order_id, domain.CANCELLED, data["reason"])

    @rpc
    def sync_catalogue(self):
        """Refresh the local catalogue copy from inventory (RPC, with timeout)."""
        products = self.inventory.list_products()
        with self.uow as uow:
            for product in products:
                handlers.apply_product(uow, product)
        return len(products)

    @rpc
    def list_catalogue(self):
        """What orders currently believes can be ordered, and at what price."""
        with self.uow.read_only() as uow:
            return handlers.list_catalogue(uow)

    @rpc
    def ping(self):
        return "pong"

    @handles("inventory", "stock_reserved", stock_reserved_schema, prepare_batch=handlers.lock_orders_of)
    def confirm_order(self, uow, event):
        handlers.settle(uow, event, domain.CONFIRMED, "stock reserved")

    @handles("inventory", "stock_rejected", stock_rejected_schema, prepare_batch=handlers.lock_orders_of)
    def reject_order(self, uow, event):
        handlers.settle(uow, event, domain.REJECTED, "stock not available", reasons=event.data["reasons"])

    @handles("inventory", "product_changed", product_changed_schema)
    def update_catalogue(self, uow, event):
        handlers.apply_product(uow, event.data)

    @timer(interval=IDEMPOTENCY_PURGE_INTERVAL)
    def purge_idempotency_keys(self):
        """Forget keys older than IDEMPOTENCY_KEY_TTL (expired keys are ignored anyway)."""
        with self.uow as uow:
            removed = handlers.forget_idempotency_keys(uow, self.settings.idempotency_key_ttl)
        if removed:
            log.info("forgot %d expired idempotency keys", removed)
        return removed

    @timer(interval=IDEMPOTENCY_PURGE_INTERVAL)
    def purge_rate_limit_counters(self):
        """Delete the rate-limit counters of windows that have ended."""
        with self.uow as uow:
            return ratelimit.forget_ended(uow.session, self.settings.rate_limit_window)


def _known_order_id(order_id):
    """The canonical order id, or NotFound: what cannot be an order id never reaches the database.

    The same rule as the HTTP path parameter: a UUID, any case.
    """
    known = order_id_or_none(order_id)
    if known is None:
        raise NotFound("No order with id {!r}.".format(order_id)[:120], details={"order_id": ["Not an order id."]})
    return known
