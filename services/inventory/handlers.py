"""Inventory's use cases: each takes a unit of work, applies a rule, publishes what it causes.

The entrypoints in ``service.py`` validate input and open the unit of work;
the rules are in ``domain.py``, the statements in ``store.py``.
"""
import logging

from sqlalchemy.exc import IntegrityError

from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.validation import MAX_STOCK

from . import domain, events, store
from .models import Product, Reservation
from .schemas import ProductSchema

log = logging.getLogger(__name__)

product_schema = ProductSchema()


# the catalogue ---------------------------------------------------------------------


def create_product(uow, data):
    """A new product (``data`` as NewProductSchema loads it), announced; Conflict if the sku exists."""
    if store.product(uow.session, data["sku"]) is not None:
        raise Conflict("Product {} already exists.".format(data["sku"]), details={"sku": ["Already exists."]})
    product = Product(sku=data["sku"], name=data["name"], price=data["price"],
                      on_hand=data["stock"], reserved=0, active=True, version=1)
    uow.session.add(product)
    try:
        uow.session.flush()  # a concurrent create of the same sku fails here, not at commit
    except IntegrityError:
        raise Conflict("Product {} already exists.".format(data["sku"]),
                       details={"sku": ["Already exists."]}) from None
    _publish(uow, [(events.PRODUCT_CHANGED, product)])
    return product_schema.dump(product)


def update_product(uow, sku, changes):
    product = _product(uow.session, sku, for_update=True)
    _publish(uow, domain.change_product(product, changes))
    return product_schema.dump(product)


def publish_catalogue(uow):
    """Announce every product again; how many."""
    products = store.all_products(uow.session)
    _publish(uow, [(events.PRODUCT_CHANGED, product) for product in products])
    return len(products)


def restock(uow, sku, quantity):
    _product(uow.session, sku)
    if not store.add_stock(uow.session, sku, quantity):
        raise InvalidInput("Stock on hand would pass {}.".format(MAX_STOCK), details={
            "quantity": ["On hand plus this quantity may be at most {}.".format(MAX_STOCK)]})
    uow.session.flush()
    uow.session.expire_all()
    return product_schema.dump(_product(uow.session, sku))


def get_product(uow, sku):
    return product_schema.dump(_product(uow.session, sku))


def list_products(uow):
    return product_schema.dump(store.all_products(uow.session), many=True)


def get_stock(uow, sku):
    product = _product(uow.session, sku)
    return {"sku": product.sku, "on_hand": product.on_hand, "reserved": product.reserved,
            "available": product.available}


def get_reservation(uow, order_id):
    reservation = uow.session.get(Reservation, order_id)
    if reservation is None:
        return None
    return {"order_id": reservation.order_id, "status": reservation.status,
            "lines": reservation.lines, "reasons": reservation.reasons}


# orders' events ----------------------------------------------------------------------


def reserve_stock(uow, order_id, lines):
    """``order_created``: reserve every line or none, once per order (a tombstone counts as decided)."""
    if store.is_decided(uow.session, order_id):
        log.info("order %s already has a reservation decision; nothing to do", order_id)
        return
    stock = store.locked_stock(uow.session, [line["sku"] for line in lines])
    decision = domain.reserve(order_id, lines, stock.available)
    if decision.status == domain.RESERVED:
        stock.take(decision.lines)
    store.record_decision(uow.session, order_id, decision)
    _publish(uow, decision.events)
    if decision.status == domain.RESERVED:
        log.info("order %s: stock reserved", order_id)
    else:
        log.info("order %s: stock rejected: %s", order_id, decision.reasons)


def prepare_reservations(uow, events):
    """Before a batch of ``order_created``: lock every product its orders name, in sku order, and
    look up which orders are decided: two statements for the batch, none per order.

    Each order alone locks its products in sku order, but a batch of orders
    does not: two batches, one taking sku 2 then 5, the other 5 then 2,
    would deadlock. Locked first, all in the one order, they cannot.
    """
    store.locked_stock(uow.session, {line["sku"] for event in events for line in event.data["lines"]})
    store.look_up_decisions(uow.session, [event.data["order_id"] for event in events])


def release_stock(uow, order_id):
    """``order_cancelled``: give the reservation back, or leave a tombstone if it has not been made."""
    reservation = uow.session.get(Reservation, order_id)
    status, caused = domain.cancel(order_id, reservation,
                                   lambda sku: _product(uow.session, sku, for_update=True))
    if reservation is None:
        uow.session.add(Reservation(order_id=order_id, lines={}, status=status))
    elif status is not None:
        reservation.status = status
        log.info("order %s: reservation released", order_id)
    _publish(uow, caused)


def _publish(uow, caused):
    if caused:
        uow.session.flush()  # what is announced is what is stored
    for event, data in caused:
        uow.publish(event, data)


def _product(session, sku, for_update=False):
    product = store.product(session, sku, for_update)
    if product is None:
        raise NotFound("No product with sku {}.".format(sku), details={"sku": [sku]})
    return product
