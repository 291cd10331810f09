"""The inventory service: products, stock and reservations.

RPC answers questions that need an answer now (a product, its stock); the
work that changes stock for orders happens in event handlers, so an order
never waits for inventory to be up.
"""
import logging

from nameko.dependency_providers import Config
from sqlalchemy import bindparam, insert, select, update

from services.common.consumers import InboxRetention
from services.common.correlation import CorrelationId
from services.common.db import ServiceDatabase
from services.common.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.events import utcnow
from services.common.metrics import Metrics
from services.common.outbox import Outbox
from services.common.rpc import rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.tracing import Tracer
from services.common.uow import UnitOfWork, handles
from services.common.validation import MAX_ORDER_ID, MAX_STOCK, is_sku, storable

from . import domain, events
from .models import InventoryBase, OutboxMessage, ProcessedEvent, Product, Reservation
from .schemas import (
    NewProductSchema,
    OrderCancelledSchema,
    OrderCreatedSchema,
    ProductChangesSchema,
    ProductSchema,
    QuantitySchema,
)

log = logging.getLogger(__name__)

product_schema = ProductSchema()
# built once (once per order they were a visible share of the profile)
order_created_schema = OrderCreatedSchema()
order_cancelled_schema = OrderCancelledSchema()

# The statements every order runs, built once: building them and computing
# their cache keys cost SQLAlchemy several times what running them does.
_products, _reservations = Product.__table__, Reservation.__table__
DECIDED = select(_reservations.c.order_id).where(_reservations.c.order_id == bindparam("order_id"))
INSERT_DECISION = insert(_reservations)
RESERVE_LINE = (update(_products)
                .where(_products.c.sku == bindparam("line_sku"), _products.c.active.is_(True),
                       _products.c.on_hand - _products.c.reserved >= bindparam("quantity"))
                .values(reserved=_products.c.reserved + bindparam("quantity"), updated_at=bindparam("now")))
UNDO_LINE = (update(_products).where(_products.c.sku == bindparam("line_sku"))
             .values(reserved=_products.c.reserved - bindparam("quantity")))


class InventoryService(DeadLetterRpc, InboxRetention):
    name = "inventory"

    config = Config()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(InventoryBase)
    outbox = Outbox(InventoryBase, OutboxMessage, optional=events.OPTIONAL)
    correlation_id = CorrelationId()
    tracer = Tracer()
    metrics = Metrics(InventoryBase, outbox=OutboxMessage, counts=[(
        "inventory_reservations_by_status",
        "Reservation decisions by status: reserved, rejected, released, cancelled.",
        Reservation.status)])
    shutdown = GracefulShutdown()
    uow = UnitOfWork(ProcessedEvent)

    # catalogue --------------------------------------------------------------

    @rpc(expected_exceptions=(InvalidInput, Conflict))
    def create_product(self, sku, name, price, stock=0):
        data = load_input(NewProductSchema(), {"sku": sku, "name": name, "price": price, "stock": stock})
        with self.uow as uow:
            if uow.session.get(Product, data["sku"]) is not None:
                raise Conflict("Product {} already exists.".format(data["sku"]),
                               details={"sku": ["Already exists."]})
            product = Product(sku=data["sku"], name=data["name"], price=data["price"],
                              on_hand=data["stock"], reserved=0, active=True, version=1)
            uow.session.add(product)
            _product_changed(uow, product)
        return product_schema.dump(product)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def update_product(self, sku, **changes):
        """Change name, price or active; orders learns of it by event."""
        sku = _known_sku(sku)
        data = load_input(ProductChangesSchema(), changes)
        with self.uow as uow:
            product = self._product(uow.session, sku, for_update=True)
            if any(getattr(product, key) != value for key, value in data.items()):
                for key, value in data.items():
                    setattr(product, key, value)
                product.version += 1
                _product_changed(uow, product)
        return product_schema.dump(product)

    @rpc(expected_exceptions=NotFound)
    def get_product(self, sku):
        sku = _known_sku(sku)
        with self.db.get_session() as session:
            return product_schema.dump(self._product(session, sku))

    @rpc
    def list_products(self):
        with self.db.get_session() as session:
            products = session.scalars(select(Product).order_by(Product.sku)).all()
            return product_schema.dump(products, many=True)

    @rpc(expected_exceptions=(InvalidInput, NotFound))
    def restock(self, sku, quantity):
        """Add ``quantity`` to the stock on hand, which stays within MAX_STOCK (a typed error otherwise)."""
        sku = _known_sku(sku)
        quantity = load_input(QuantitySchema(), {"quantity": quantity})["quantity"]
        with self.db.get_session() as session:
            self._product(session, sku)
            # the sum is checked in the same statement that makes it, so two
            # restocks racing cannot together pass the column's range
            added = session.execute(
                update(Product).where(Product.sku == sku, Product.on_hand <= MAX_STOCK - quantity)
                .values(on_hand=Product.on_hand + quantity, updated_at=utcnow())
            ).rowcount
            if not added:
                raise InvalidInput("Stock on hand would pass {}.".format(MAX_STOCK), details={
                    "quantity": ["On hand plus this quantity may be at most {}.".format(MAX_STOCK)]})
            session.flush()
            session.expire_all()
            return product_schema.dump(self._product(session, sku))

    @rpc(expected_exceptions=NotFound)
    def get_stock(self, sku):
        sku = _known_sku(sku)
        with self.db.get_session() as session:
            product = self._product(session, sku)
            return {"sku": product.sku, "on_hand": product.on_hand,
                    "reserved": product.reserved, "available": product.available}

    @rpc
    def publish_catalogue(self):
        """Re-announce every product, for a consumer that lost its copy."""
        with self.uow as uow:
            products = uow.session.scalars(select(Product).order_by(Product.sku)).all()
            for product in products:
                _product_changed(uow, product)
            return len(products)

    @rpc(expected_exceptions=InvalidInput)
    def get_reservation(self, order_id):
        if not isinstance(order_id, str) or len(order_id) > MAX_ORDER_ID or not storable(order_id):
            raise InvalidInput("Not an order id.", details={"order_id": ["Not an order id."]})
        with self.db.get_session() as session:
            reservation = session.get(Reservation, order_id)
            if reservation is None:
                return None
            return {"order_id": reservation.order_id, "status": reservation.status,
                    "lines": reservation.lines, "reasons": reservation.reasons}

    @rpc
    def ping(self):
        return "pong"

    # order events -------------------------------------------------------------

    @handles("orders", "order_created", order_created_schema)
    def reserve_stock(self, uow, event):
        order_id = event.data["order_id"]
        requested = domain.quantities_by_sku(event.data["lines"])
        # Core statements for the decision row: it runs once per order,
        # and the ORM's load and flush were most of its cost
        connection = uow.session.connection()
        decided = connection.execute(DECIDED, {"order_id": order_id}).first()
        if decided is not None:
            log.info("order %s already has a reservation decision; nothing to do", order_id)
            return
        failed_sku = self._reserve_all_or_nothing(uow.session, requested)
        now = utcnow()
        if failed_sku is None:
            connection.execute(INSERT_DECISION, {
                "order_id": order_id, "status": Reservation.RESERVED, "lines": requested, "reasons": None,
                "created_at": now, "updated_at": now})
            uow.publish(events.STOCK_RESERVED, {"order_id": order_id, "lines": _as_lines(requested)})
            log.info("order %s: stock reserved", order_id)
            return
        reasons = self._explain_shortfall(uow.session, requested, failed_sku)
        connection.execute(INSERT_DECISION, {
            "order_id": order_id, "status": Reservation.REJECTED, "lines": requested, "reasons": reasons,
            "created_at": now, "updated_at": now})
        uow.publish(events.STOCK_REJECTED, {"order_id": order_id, "reasons": reasons})
        log.info("order %s: stock rejected: %s", order_id, reasons)

    @handles("orders", "order_cancelled", order_cancelled_schema)
    def release_stock(self, uow, event):
        order_id = event.data["order_id"]
        session = uow.session
        reservation = session.get(Reservation, order_id)
        if reservation is None:
            # Cancelled before its order_created arrived: remember, so the
            # late order_created reserves nothing.
            session.add(Reservation(order_id=order_id, lines={},
                                    status=Reservation.CANCELLED_BEFORE_RESERVATION))
            return
        if reservation.status != Reservation.RESERVED:
            return
        for sku, quantity in sorted(reservation.lines.items()):
            product = self._product(session, sku, for_update=True)
            product.reserved = domain.released(product.reserved, quantity)
        reservation.status = Reservation.RELEASED
        uow.publish(events.STOCK_RELEASED, {"order_id": order_id, "lines": _as_lines(reservation.lines)})
        log.info("order %s: reservation released", order_id)

    # helpers ---------------------------------------------------------------------

    def _product(self, session, sku, for_update=False):
        query = select(Product).where(Product.sku == sku)
        if for_update:
            query = query.with_for_update()
        product = session.scalars(query).first()
        if product is None:
            raise NotFound("No product with sku {}.".format(sku), details={"sku": [sku]})
        return product

    @staticmethod
    def _reserve_all_or_nothing(session, requested):
        """Reserve every line or none; return the first sku that did not fit.

        Each line is one conditional UPDATE, atomic in the database whatever
        the number of inventory processes; rows are touched in sku order so
        two orders cannot deadlock. If a line does not fit, the lines already
        reserved in this transaction are given back before it commits.
        """
        done = []
        connection = session.connection()  # Core: no ORM bulk-update machinery per line
        for sku, quantity in requested.items():
            result = connection.execute(RESERVE_LINE, {"line_sku": sku, "quantity": quantity, "now": utcnow()})
            if result.rowcount != 1:
                for done_sku, done_quantity in done:
                    connection.execute(UNDO_LINE, {"line_sku": done_sku, "quantity": done_quantity})
                return sku
            done.append((sku, quantity))
        return None

    @staticmethod
    def _explain_shortfall(session, requested, failed_sku):
        rows = session.execute(
            select(Product.sku, Product.on_hand - Product.reserved, Product.active)
            .where(Product.sku.in_(list(requested)))
        ).all()
        available = {sku: (avail if active else None) for sku, avail, active in rows}
        found = domain.shortfalls(requested, available)
        if not found:  # stock came back between the update and this read
            found = [domain.Shortfall(failed_sku, domain.INSUFFICIENT_STOCK,
                                      requested[failed_sku], available.get(failed_sku) or 0)]
        return [shortfall.to_dict() for shortfall in found]


def _known_sku(sku):
    """What cannot be a sku is not looked up: NotFound, as over HTTP."""
    if not is_sku(sku):
        raise NotFound("No product with sku {!r}.".format(sku)[:120], details={"sku": ["Not a valid sku."]})
    return sku


def _product_changed(uow, product):
    uow.session.flush()
    uow.publish(events.PRODUCT_CHANGED, product)


def _as_lines(quantities):
    return [{"sku": sku, "quantity": quantity} for sku, quantity in sorted(quantities.items())]
