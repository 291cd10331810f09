"""Orders' use cases: each takes a unit of work, applies the rules, stages the events they cause.

The entrypoints (``service.py`` for RPC and events, ``http.py`` for HTTP)
validate input and call these explicitly; the rules are in ``domain.py``,
the statements in ``store.py``. All but ``place_order_once`` run inside an
open unit of work (``with uow:``); that one needs several transactions and
opens them itself.
"""
import hashlib
import json
import logging
import uuid
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.http.auth import normalise_email
from services.common.messaging.events import utcnow
from services.common.schema import load_input

from . import domain, store
from .models import CatalogueItem, IdempotencyKey
from .schemas import OrderSchema, encode_cursor, place_order_schema

log = logging.getLogger(__name__)

order_schema = OrderSchema()


def order_not_found(order_id):
    """The one answer for a missing order and for another customer's (which must not be revealed)."""
    return NotFound("No order with id {}.".format(order_id), details={"order_id": [str(order_id)]})


# placing an order ----------------------------------------------------------------------


def place_order(uow, data, correlation_id):
    """The order, its lines at today's prices and its ``order_created`` event: the order as stored.

    ``data`` is a validated order request (``customer_email`` normalised).
    """
    order_id = str(uuid.uuid4())
    placed = _placed(order_id, data, store.prices(uow.session, [line["sku"] for line in data["lines"]]))
    priced, total = placed.lines, placed.total
    now = utcnow()
    store.insert_order(uow.session, order_id, data, priced, total, correlation_id, domain.PENDING, now)
    _publish(uow, placed.events)
    # the answer is built from the same values, in the shape OrderSchema gives a stored order
    at = now.isoformat()
    return {
        "id": order_id, "status": domain.PENDING, "customer_email": data["customer_email"],
        "lines": [{"sku": line["sku"], "name": line["name"], "quantity": line["quantity"],
                   "unit_price": line["unit_price"], "line_total": line["line_total"]} for line in priced],
        "total": total, "reasons": None, "correlation_id": correlation_id, "created_at": at, "updated_at": at,
        "history": [{"from": None, "to": domain.PENDING, "reason": "placed", "at": at}],
    }


def _placed(order_id, data, catalogue):
    try:
        return domain.place(order_id, data["customer_email"], data["lines"], catalogue)
    except domain.UnknownProducts as exc:
        raise InvalidInput(str(exc), details={"lines": ["Unknown sku: {}".format(sku) for sku in exc.skus]}) from None
    except domain.TotalTooLarge as exc:
        raise InvalidInput(str(exc), details={"lines": [str(exc)]}) from None


def place_order_once(uow, data, key, ttl, correlation_id):
    """``place_order`` behind an idempotency key: ``(status, order, replayed)``.

    The key row is written in the order's own transaction, so either both
    the order (with its ``order_created`` event) and the key exist or
    neither does. A key belongs to the order's customer: another customer's
    identical key is another key. A request racing one with the same key
    blocks on the key's primary key until the first commits, fails to insert
    it, rolls back everything it wrote and answers with the stored response.
    ``ttl``: seconds a key is remembered.
    """
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    cutoff = utcnow() - timedelta(seconds=ttl)
    customer = data["customer_email"]
    with uow.read_only():
        stored = _stored_answer(uow.session, customer, key, fingerprint, cutoff)
    if stored is not None:
        return stored
    try:
        with uow:
            store.free_expired_key(uow.session, customer, key, cutoff)
            order = place_order(uow, data, correlation_id)
            uow.session.add(IdempotencyKey(customer=customer, key=key, request_hash=fingerprint,
                                           order_id=order["id"], status_code=202, response=order))
            uow.session.flush()
    except IntegrityError:
        with uow.read_only():
            stored = _stored_answer(uow.session, customer, key, fingerprint, cutoff)
        if stored is None:
            raise
        log.info("order request with idempotency key answered by order %s", stored[1]["id"])
        return stored
    return 202, order, False


def _stored_answer(session, customer, key, fingerprint, cutoff):
    record = store.idempotency_key(session, customer, key, cutoff)
    if record is None:
        return None
    if record.request_hash != fingerprint:
        raise Conflict("This Idempotency-Key was used with a different body.",
                       details={"Idempotency-Key": ["Already used for order {} with another body."
                                                    .format(record.order_id)]})
    return record.status_code, record.response, True


def forget_idempotency_keys(uow, ttl):
    """Forget keys older than ``ttl`` seconds (expired keys are ignored anyway); how many."""
    return store.forget_keys(uow.session, utcnow() - timedelta(seconds=ttl))


# reading orders ---------------------------------------------------------------------------


def read_order(uow, order_id):
    return order_schema.dump(_order(uow.session, order_id))


def find_orders(uow, query):
    """A page of orders, newest first, and the cursor of the next page.

    Keyset pagination on (created_at, id): a page starts strictly after
    the last row of the previous one, so orders added meanwhile (all newer
    than any cursor) can neither push a row onto two pages nor hide one.
    """
    limit = query["limit"]
    email = query.get("customer_email")
    rows = store.orders_page(uow.session, limit, status=query.get("status"),
                             customer_email=normalise_email(email) if email is not None else None,
                             after=query.get("cursor"))
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return {"orders": order_schema.dump(page, many=True), "next_cursor": next_cursor}


# moving an order --------------------------------------------------------------------------


def change_status(uow, order_id, status, reason, owner=None):
    """Move an order to ``status`` and announce it; the order as stored.

    With ``owner`` (a normalised email), another customer's order is not
    found, exactly like a missing one. An illegal move is a Conflict.
    """
    row = store.lock_order(uow.session, order_id)
    if row is None or (owner is not None and normalise_email(row.customer_email) != owner):
        raise order_not_found(order_id)
    try:
        _move(uow, row, status, reason)
    except domain.IllegalTransition as exc:
        raise Conflict(str(exc), details={"status": [row.status]}) from None
    return order_schema.dump(_order(uow.session, order_id))


def lock_orders_of(uow, events):
    """Before a batch of inventory's answers: lock their orders in one statement, in id order."""
    store.lock_orders(uow.session, [event.data["order_id"] for event in events])


def settle(uow, event, status, reason, reasons=None):
    """Inventory's answer: move the order as it says, unless the order already moved on."""
    row = store.lock_order(uow.session, event.data["order_id"])
    if row is None:
        log.error("%s for unknown order %s; ignored", event.type, event.data["order_id"])
        return
    if not domain.can_become(row.status, status):
        # e.g. cancelled while inventory was deciding: inventory
        # releases on order_cancelled, so nothing to undo here.
        log.info("order %s is %s; %s ignored", row.id, row.status, event.type)
        return
    _move(uow, row, status, reason, reasons)


def _move(uow, row, status, reason, reasons=None):
    """The move (a domain rule), stored, and the event it causes staged."""
    moved = domain.move(store.with_lines(uow.session, row), status, utcnow(), reasons)
    store.move_order(uow.session, row, moved.changes, reason)
    _publish(uow, moved.events)
    log.info("order %s is now %s (%s)", row.id, status, reason)


def _publish(uow, caused):
    for event, data in caused:
        uow.publish(event, data)


def _order(session, order_id):
    order = store.order(session, order_id)
    if order is None:
        raise order_not_found(order_id)
    return order


# the catalogue copy ---------------------------------------------------------------------------


def apply_product(uow, product):
    """``product_changed`` (or a product from inventory's RPC): keep it if it is newer."""
    item = uow.session.get(CatalogueItem, product["sku"])
    version = product.get("version", 0)
    if not domain.is_newer(version, None if item is None else item.version):
        return
    if item is None:
        uow.session.add(CatalogueItem(sku=product["sku"], name=product["name"], price=product["price"],
                                      active=product.get("active", True), version=version))
    else:
        item.name, item.price = product["name"], product["price"]
        item.active, item.version = product.get("active", True), version


def list_catalogue(uow):
    return [{"sku": item.sku, "name": item.name, "price": item.price, "active": item.active,
             "version": item.version} for item in store.catalogue(uow.session)]


def order_request(body, settings):
    """``body`` as a validated order request within ``settings``' limits (InvalidInput naming the field
    otherwise), its email in normal form."""
    data = load_input(place_order_schema(settings.max_line_quantity, settings.max_order_lines), body)
    # stored lower-case: a customer's orders are found whatever case was typed
    data["customer_email"] = normalise_email(data["customer_email"])
    return data
