"""The inventory service: products, stock and reservations.

RPC answers questions that need an answer now (a product, its stock); the
work that changes stock for orders happens in event handlers, so an order
never waits for inventory to be up. The catalogue's admin writes are also
served over HTTP (``http.py``, admin-scoped bearer tokens), so the HTTP
clients that write the catalogue need no broker rights at all. Entrypoints
only: each validates its input and runs a use case from ``handlers.py`` in a
unit of work.
"""
from nameko.dependency_providers import Config

from services.common.messaging.consumers import InboxRetention
from services.common.observability.correlation import CorrelationId
from services.common.db.database import ServiceDatabase
from services.common.messaging.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.observability.metrics import Metrics
from services.common.messaging.outbox import Outbox
from services.common.messaging.rpc import rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.observability.telemetry import Telemetry
from services.common.observability.tracing import Tracer
from services.common.uow import UnitOfWork, handles
from services.common.validation import MAX_ORDER_ID, known_sku, storable

from . import domain, events, handlers  # noqa: F401  (domain: tests replace its rules here)
from .http import AdminHttpApi
from .models import InventoryBase, OutboxMessage, ProcessedEvent, Reservation
from .schemas import NewProductSchema, OrderCancelledSchema, OrderCreatedSchema, ProductChangesSchema, QuantitySchema

# read schemas built once (once per order they were a visible share of the profile)
order_created_schema = OrderCreatedSchema()
order_cancelled_schema = OrderCancelledSchema()


class InventoryService(AdminHttpApi, DeadLetterRpc, InboxRetention):
    name = "inventory"

    config = Config()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(InventoryBase)
    outbox = Outbox(InventoryBase, OutboxMessage, optional=events.OPTIONAL)
    uow = UnitOfWork(ProcessedEvent)
    correlation_id = CorrelationId()
    tracer = Tracer()
    telemetry = Telemetry()
    metrics = Metrics(InventoryBase, outbox=OutboxMessage, counts=[(
        "inventory_reservations_by_status",
        "Reservation decisions by status: reserved, rejected, released, cancelled.",
        Reservation.status)])
    shutdown = GracefulShutdown()

    @rpc(expected_exceptions=(InvalidInput, Conflict))
    def create_product(self, sku, name, price, stock=0):
        data = load_input(NewProductSchema(), {"sku": sku, "name": name, "price": price, "stock": stock})
        with self.uow as uow:
            return handlers.create_product(uow, data)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def update_product(self, sku, **changes):
        """Change name, price or active; orders learns of it by event."""
        sku = known_sku(sku)
        data = load_input(ProductChangesSchema(), changes)
        with self.uow as uow:
            return handlers.update_product(uow, sku, data)

    @rpc(expected_exceptions=NotFound)
    def get_product(self, sku):
        sku = known_sku(sku)
        with self.uow.read_only() as uow:
            return handlers.get_product(uow, sku)

    @rpc
    def list_products(self):
        with self.uow.read_only() as uow:
            return handlers.list_products(uow)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def restock(self, sku, quantity):
        """Add ``quantity`` to the stock on hand, which stays within MAX_STOCK (a typed error otherwise)."""
        sku = known_sku(sku)
        quantity = load_input(QuantitySchema(), {"quantity": quantity})["quantity"]
        with self.uow as uow:
            return handlers.restock(uow, sku, quantity)

    @rpc(expected_exceptions=NotFound)
    def get_stock(self, sku):
        sku = known_sku(sku)
        with self.uow.read_only() as uow:
            return handlers.get_stock(uow, sku)

    @rpc
    def publish_catalogue(self):
        """Re-announce every product, for a consumer that lost its copy."""
        with self.uow as uow:
            return handlers.publish_catalogue(uow)

    @rpc(expected_exceptions=InvalidInput)
    def get_reservation(self, order_id):
        if not isinstance(order_id, str) or len(order_id) > MAX_ORDER_ID or not storable(order_id):
            raise InvalidInput("Not an order id.", details={"order_id": ["Not an order id."]})
        with self.uow.read_only() as uow:
            return handlers.get_reservation(uow, order_id)

    @rpc
    def ping(self):
        return "pong"

    @handles("orders", "order_created", order_created_schema, prepare_batch=handlers.prepare_reservations)
    def reserve_stock(self, uow, event):
        handlers.reserve_stock(uow, event.data["order_id"], event.data["lines"])

    # not batched: a release locks the products its stored reservation names,
    # which a batch could not lock in order beforehand (cancels are few)
    @handles("orders", "order_cancelled", order_cancelled_schema, batched=False)
    def release_stock(self, uow, event):
        handlers.release_stock(uow, event.data["order_id"])
