"""The orders service: the order lifecycle, over RPC, HTTP and events.

Placing an order is one local transaction: the order, its lines at today's
prices (from orders' own copy of the catalogue) and an ``order_created``
event in the outbox. Inventory answers by event; the order becomes confirmed
or rejected when that answer arrives, whenever that is.
"""
import hashlib
import json
import logging
import uuid
from datetime import timedelta

from nameko.dependency_providers import Config
from nameko.timer import timer
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.common.consumers import InboxRetention
from services.common.correlation import CorrelationId
from services.common.db import ServiceDatabase
from services.common.deadletters import DeadLetterRpc
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.events import as_utc, utcnow
from services.common.metrics import Metrics
from services.common.outbox import Outbox
from services.common.rpc import TimedRpcProxy, rpc
from services.common.schema import load_input
from services.common.shutdown import GracefulShutdown
from services.common.tracing import Tracer
from services.common.uow import UnitOfWork, handles
from services.common.validation import order_id_or_none

from . import domain, events, ratelimit
from .api import DEFAULT_RATE_LIMIT_WINDOW, HttpApi, order_not_found
from .auth import normalise_email
from .models import (
    CatalogueItem,
    IdempotencyKey,
    Order,
    OrderLine,
    OrdersBase,
    OutboxMessage,
    ProcessedEvent,
    StatusChange,
)
from .schemas import (
    CancelOrderSchema,
    ListOrdersSchema,
    OrderSchema,
    ProductChangedSchema,
    StockRejectedSchema,
    StockReservedSchema,
    encode_cursor,
    place_order_schema,
)

log = logging.getLogger(__name__)

DEFAULT_IDEMPOTENCY_KEY_TTL = 24 * 3600
IDEMPOTENCY_PURGE_INTERVAL = 300

order_schema = OrderSchema()
cancel_order_schema = CancelOrderSchema()

# The statements every order runs, built once. Building a SELECT or UPDATE
# and computing its cache key cost SQLAlchemy 3-4 times as much as running a
# prebuilt one with parameters (measured: ~300 us against ~70 us on SQLite).
_orders, _lines, _history = Order.__table__, OrderLine.__table__, StatusChange.__table__
_catalogue = CatalogueItem.__table__
PRICES = (select(_catalogue.c.sku, _catalogue.c.name, _catalogue.c.price)
          .where(_catalogue.c.sku.in_(bindparam("skus", expanding=True)), _catalogue.c.active.is_(True)))
INSERT_ORDER, INSERT_LINES, INSERT_HISTORY = insert(_orders), insert(_lines), insert(_history)
LOCK_ORDER = select(_orders).where(_orders.c.id == bindparam("order_id")).with_for_update()
ORDER_LINES = select(_lines).where(_lines.c.order_id == bindparam("order_id")).order_by(_lines.c.position)
MOVE_ORDER = (update(_orders).where(_orders.c.id == bindparam("order_id"))
              .values(status=bindparam("status"), updated_at=bindparam("updated_at")))
MOVE_ORDER_WITH_REASONS = MOVE_ORDER.values(reasons=bindparam("reasons"))
# inventory's answers arrive once per order: their schemas are built once
stock_reserved_schema = StockReservedSchema()
stock_rejected_schema = StockRejectedSchema()
product_changed_schema = ProductChangedSchema()


class OrdersService(HttpApi, DeadLetterRpc, InboxRetention):
    name = "orders"

    config = Config()
    inbox = ProcessedEvent  # for InboxRetention
    db = ServiceDatabase(OrdersBase)
    outbox = Outbox(OrdersBase, OutboxMessage)
    inventory = TimedRpcProxy("inventory")
    correlation_id = CorrelationId()
    tracer = Tracer()
    metrics = Metrics(OrdersBase, outbox=OutboxMessage,
                      counts=[("orders_by_status", "Orders by status.", Order.status)])
    shutdown = GracefulShutdown()
    uow = UnitOfWork(ProcessedEvent)

    # RPC ----------------------------------------------------------------------

    @rpc(expected_exceptions=InvalidInput)
    def create_order(self, customer_email, lines):
        return self.place_order({"customer_email": customer_email, "lines": lines})

    @rpc(expected_exceptions=NotFound)
    def get_order(self, order_id):
        return self.read_order(_known_order_id(order_id))

    @rpc(expected_exceptions=InvalidInput)
    def list_orders(self, status=None, customer_email=None, limit=50):
        query = {key: value for key, value in
                 (("status", status), ("customer_email", customer_email), ("limit", limit))
                 if value is not None}
        return self.find_orders(load_input(ListOrdersSchema(), query))["orders"]

    @rpc(expected_exceptions=(InvalidInput, NotFound, Conflict))
    def cancel_order(self, order_id, reason=None):
        """Cancel an order; ``reason`` obeys the same rules as over HTTP."""
        order_id = _known_order_id(order_id)
        data = load_input(cancel_order_schema, {} if reason is None else {"reason": reason})
        return self.change_status(order_id, domain.CANCELLED, data["reason"])

    @rpc
    def sync_catalogue(self):
        """Refresh the local catalogue copy from inventory (RPC, with timeout)."""
        products = self.inventory.list_products()
        with self.db.get_session() as session:
            for product in products:
                self._apply_product(session, product)
        return len(products)

    @rpc
    def list_catalogue(self):
        """What orders currently believes can be ordered, and at what price."""
        with self.db.get_session() as session:
            items = session.scalars(select(CatalogueItem).order_by(CatalogueItem.sku)).all()
            return [{"sku": item.sku, "name": item.name, "price": item.price,
                     "active": item.active, "version": item.version} for item in items]

    @rpc
    def ping(self):
        return "pong"

    # the order lifecycle (shared by RPC and HTTP) -------------------------------

    def place_order(self, body):
        with self.uow as uow:
            order = self._create_order(uow, self._order_request(body))
        _log_placed(order)
        return order

    def _order_request(self, body):
        data = load_input(place_order_schema(int(self.config.get("MAX_LINE_QUANTITY", 1000)),
                                             int(self.config.get("MAX_ORDER_LINES", 100))), body)
        # stored lower-case: a customer's orders are found whatever case was typed
        data["customer_email"] = normalise_email(data["customer_email"])
        return data

    def place_order_once(self, body, key):
        """``place_order`` behind an idempotency key: ``(status, order, replayed)``.

        The key row is written in the order's own transaction, so either both
        the order (with its ``order_created`` event) and the key exist or
        neither does. A key belongs to the order's customer: another
        customer's identical key is another key. A request racing one with the same key blocks on the
        key's primary key until the first commits, fails to insert it, rolls
        back everything it wrote and answers with the stored response.
        """
        data = self._order_request(body)
        fingerprint = hashlib.sha256(
            json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        cutoff = utcnow() - timedelta(seconds=self._idempotency_ttl())
        customer = data["customer_email"]
        with self.db.get_session() as session:
            stored = self._stored_answer(session, customer, key, fingerprint, cutoff)
        if stored is not None:
            return stored
        try:
            with self.uow as uow:
                # an expired key is free again (a bulk delete: a racing twin
                # may already have removed it)
                uow.session.execute(delete(IdempotencyKey).where(
                    IdempotencyKey.customer == customer, IdempotencyKey.key == key,
                    IdempotencyKey.created_at < cutoff))
                order = self._create_order(uow, data)
                uow.session.add(IdempotencyKey(customer=customer, key=key, request_hash=fingerprint,
                                               order_id=order["id"], status_code=202, response=order))
                uow.session.flush()
        except IntegrityError:
            with self.db.get_session() as session:
                stored = self._stored_answer(session, customer, key, fingerprint, cutoff)
            if stored is None:
                raise
            log.info("order request with idempotency key answered by order %s", stored[1]["id"])
            return stored
        _log_placed(order)
        return 202, order, False

    def _stored_answer(self, session, customer, key, fingerprint, cutoff):
        record = session.get(IdempotencyKey, (customer, key))
        if record is None or as_utc(record.created_at) < cutoff:
            return None
        if record.request_hash != fingerprint:
            raise Conflict("This Idempotency-Key was used with a different body.",
                           details={"Idempotency-Key": ["Already used for order {} with another body."
                                                        .format(record.order_id)]})
        return record.status_code, record.response, True

    def _idempotency_ttl(self):
        return float(self.config.get("IDEMPOTENCY_KEY_TTL") or DEFAULT_IDEMPOTENCY_KEY_TTL)

    @timer(interval=IDEMPOTENCY_PURGE_INTERVAL)
    def purge_idempotency_keys(self):
        """Forget keys older than IDEMPOTENCY_KEY_TTL (expired keys are ignored anyway)."""
        cutoff = utcnow() - timedelta(seconds=self._idempotency_ttl())
        with self.db.get_session() as session:
            removed = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)).rowcount
        if removed:
            log.info("forgot %d expired idempotency keys", removed)
        return removed

    @timer(interval=IDEMPOTENCY_PURGE_INTERVAL)
    def purge_rate_limit_counters(self):
        """Delete the rate-limit counters of windows that have ended."""
        window = int(self.config.get("RATE_LIMIT_WINDOW") or DEFAULT_RATE_LIMIT_WINDOW)
        with self.db.get_session() as session:
            return ratelimit.forget_ended(session, window)

    def _create_order(self, uow, data):
        """The order, its lines at today's prices and its ``order_created`` event, in ``uow``."""
        skus = [line["sku"] for line in data["lines"]]
        connection = uow.session.connection()  # the session's transaction, without ORM execution
        catalogue = {sku: (name, price) for sku, name, price in connection.execute(PRICES, {"skus": skus})}
        try:
            priced, total = domain.price_lines(data["lines"], catalogue)
            domain.check_total(total)
        except domain.UnknownProducts as exc:
            raise InvalidInput(str(exc), details={"lines": ["Unknown sku: {}".format(sku)
                                                             for sku in exc.skus]}) from None
        except domain.TotalTooLarge as exc:
            raise InvalidInput(str(exc), details={"lines": [str(exc)]}) from None
        # Core inserts, not ORM objects: the ORM's unit of work (flush,
        # dependency sort, identity map) was the largest share of the orders
        # process's CPU, for rows that are written once here and never
        # touched again in this transaction. The answer is built from the
        # same values, in the shape OrderSchema gives a stored order.
        now = utcnow()
        order_id = str(uuid.uuid4())
        connection.execute(INSERT_ORDER, {
            "id": order_id, "customer_email": data["customer_email"], "status": domain.PENDING,
            "total": total, "reasons": None, "correlation_id": self.correlation_id,
            "created_at": now, "updated_at": now})
        connection.execute(INSERT_LINES, [
            {"order_id": order_id, "position": index, "sku": line["sku"], "name": line["name"],
             "quantity": line["quantity"], "unit_price": line["unit_price"]}
            for index, line in enumerate(priced)])
        connection.execute(INSERT_HISTORY, {
            "order_id": order_id, "from_status": None, "to_status": domain.PENDING, "reason": "placed",
            "at": now})
        uow.publish(events.ORDER_CREATED, {
            "order_id": order_id, "customer_email": data["customer_email"], "total": total,
            "lines": [{"sku": line["sku"], "quantity": line["quantity"],
                       "unit_price": line["unit_price"]} for line in priced],
        })
        at = now.isoformat()
        return {
            "id": order_id, "status": domain.PENDING, "customer_email": data["customer_email"],
            "lines": [{"sku": line["sku"], "name": line["name"], "quantity": line["quantity"],
                       "unit_price": line["unit_price"], "line_total": line["line_total"]}
                      for line in priced],
            "total": total, "reasons": None, "correlation_id": self.correlation_id,
            "created_at": at, "updated_at": at,
            "history": [{"from": None, "to": domain.PENDING, "reason": "placed", "at": at}],
        }

    def read_order(self, order_id):
        with self.db.get_session() as session:
            return order_schema.dump(self._order(session, order_id))

    def find_orders(self, query):
        """A page of orders, newest first, and the cursor of the next page.

        Keyset pagination on (created_at, id): a page starts strictly after
        the last row of the previous one, so orders added meanwhile (all newer
        than any cursor) can neither push a row onto two pages nor hide one.
        """
        limit = query["limit"]
        with self.db.get_session() as session:
            statement = select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
            if "status" in query:
                statement = statement.where(Order.status == query["status"])
            if "customer_email" in query:
                statement = statement.where(Order.customer_email == normalise_email(query["customer_email"]))
            if query.get("cursor"):
                created_at, order_id = query["cursor"]
                statement = statement.where(or_(
                    Order.created_at < created_at,
                    and_(Order.created_at == created_at, Order.id < order_id)))
            rows = session.scalars(statement).all()
            page = rows[:limit]
            next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
            return {"orders": order_schema.dump(page, many=True), "next_cursor": next_cursor}

    def change_status(self, order_id, status, reason, owner=None):
        """Move an order to ``status`` and announce it, in one transaction.

        With ``owner`` (a normalised email), another customer's order is not
        found, exactly like a missing one.
        """
        with self.uow as uow:
            row = self._lock_order(uow.session, order_id)
            if row is None or (owner is not None and normalise_email(row.customer_email) != owner):
                raise order_not_found(order_id)
            try:
                domain.transition(row.status, status)
            except domain.IllegalTransition as exc:
                raise Conflict(str(exc), details={"status": [row.status]}) from None
            self._record_move(uow, row, status, reason)
            return order_schema.dump(self._order(uow.session, order_id))

    @staticmethod
    def _lock_order(session, order_id):
        """The order's row, locked for this transaction (PostgreSQL), or None."""
        return session.connection().execute(LOCK_ORDER, {"order_id": str(order_id)}).first()

    def _record_move(self, uow, row, status, reason, reasons=None):
        """A history row, the new status and the event announcing it, for a locked order row.

        Core statements rather than the ORM: inventory's answers run this for
        every order, and loading the history and flushing were most of the cost.
        The event carries the order as OrderSchema shows it, less its history.
        """
        connection = uow.session.connection()  # the session's transaction, without ORM execution
        lines = connection.execute(ORDER_LINES, {"order_id": row.id}).all()
        now = utcnow()
        changes = {"status": status, "updated_at": now}
        if reasons is not None:
            changes["reasons"] = reasons
        connection.execute(INSERT_HISTORY, {
            "order_id": row.id, "from_status": row.status, "to_status": status, "reason": reason,
            "at": now})
        connection.execute(MOVE_ORDER_WITH_REASONS if reasons is not None else MOVE_ORDER,
                           dict(changes, order_id=row.id))
        order = dict(row._mapping, lines=lines, **changes)
        uow.publish(events.ANNOUNCES[status], order)
        log.info("order %s is now %s (%s)", row.id, status, reason)

    def _order(self, session, order_id):
        order = session.scalars(select(Order).where(Order.id == str(order_id))).first()
        if order is None:
            raise order_not_found(order_id)
        return order

    # inventory's answers ------------------------------------------------------

    @handles("inventory", "stock_reserved", stock_reserved_schema)
    def confirm_order(self, uow, event):
        self._settle(uow, event, domain.CONFIRMED, "stock reserved")

    @handles("inventory", "stock_rejected", stock_rejected_schema)
    def reject_order(self, uow, event):
        self._settle(uow, event, domain.REJECTED, "stock not available", reasons=event.data["reasons"])

    def _settle(self, uow, event, status, reason, reasons=None):
        """Move the order as inventory answered, unless it already moved on."""
        row = self._lock_order(uow.session, event.data["order_id"])
        if row is None:
            log.error("%s for unknown order %s; ignored", event.type, event.data["order_id"])
            return
        if not domain.can_become(row.status, status):
            # e.g. cancelled while inventory was deciding: inventory
            # releases on order_cancelled, so nothing to undo here.
            log.info("order %s is %s; %s ignored", row.id, row.status, event.type)
            return
        self._record_move(uow, row, status, reason, reasons)

    @handles("inventory", "product_changed", product_changed_schema)
    def update_catalogue(self, uow, event):
        self._apply_product(uow.session, event.data)

    @staticmethod
    def _apply_product(session, product):
        item = session.get(CatalogueItem, product["sku"])
        version = product.get("version", 0)
        if item is None:
            session.add(CatalogueItem(sku=product["sku"], name=product["name"], price=product["price"],
                                      active=product.get("active", True), version=version))
        elif version > item.version:
            item.name, item.price = product["name"], product["price"]
            item.active, item.version = product.get("active", True), version


def _known_order_id(order_id):
    """The canonical order id, or NotFound: what cannot be an order id never reaches the database.

    The same rule as the HTTP path parameter: a UUID, any case.
    """
    known = order_id_or_none(order_id)
    if known is None:
        raise NotFound("No order with id {!r}.".format(order_id)[:120], details={"order_id": ["Not an order id."]})
    return known


def _log_placed(order):
    log.info("order %s placed (%d lines, total %d)", order["id"], len(order["lines"]), order["total"])
