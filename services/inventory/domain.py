"""Inventory rules in plain Python: no framework, no database.

Stock has two numbers that matter: ``on_hand`` (in the warehouse) and
``reserved`` (promised to confirmed orders). ``available = on_hand -
reserved`` never goes below zero, and an order's lines are reserved all
together or not at all.
"""
from collections import namedtuple
from dataclasses import dataclass

from . import events

UNKNOWN_SKU = "unknown_sku"
INSUFFICIENT_STOCK = "insufficient_stock"
PRODUCT_INACTIVE = "product_inactive"


class InventoryRuleBroken(ValueError):
    """A requested change would break an inventory invariant."""


@dataclass(frozen=True)
class Shortfall:
    sku: str
    reason: str
    requested: int
    available: int

    def to_dict(self):
        return {"sku": self.sku, "reason": self.reason,
                "requested": self.requested, "available": self.available}


def quantities_by_sku(lines):
    """Total quantity per sku, sorted by sku (a stable lock order)."""
    totals = {}
    for line in lines:
        totals[line["sku"]] = totals.get(line["sku"], 0) + int(line["quantity"])
    return dict(sorted(totals.items()))


def shortfalls(requested, available):
    """Why ``requested`` ({sku: qty}) cannot be reserved from ``available``.

    ``available`` maps each known sku to its available quantity; a sku not in
    it is unknown. An empty result means the whole order fits.
    """
    found = []
    for sku, quantity in requested.items():
        if sku not in available:
            found.append(Shortfall(sku, UNKNOWN_SKU, quantity, 0))
        elif available[sku] is None:
            found.append(Shortfall(sku, PRODUCT_INACTIVE, quantity, 0))
        elif available[sku] < quantity:
            found.append(Shortfall(sku, INSUFFICIENT_STOCK, quantity, available[sku]))
    return found


def released(reserved, quantity):
    if quantity > reserved:
        raise InventoryRuleBroken(
            "cannot release {} when only {} are reserved".format(quantity, reserved))
    return reserved - quantity


# A reservation decision's status (``Reservation.status``).
RESERVED = "reserved"
REJECTED = "rejected"
RELEASED = "released"
CANCELLED_BEFORE_RESERVATION = "cancelled"

Decision = namedtuple("Decision", "status lines reasons events")
Decision.__doc__ = """What an order's reservation came to: its status, ``{sku: quantity}``,
the shortfalls (rejected only) and the events it causes, as (declared event, data) pairs."""


def as_lines(quantities):
    return [{"sku": sku, "quantity": quantity} for sku, quantity in sorted(quantities.items())]


def reserve(order_id, lines, available):
    """Reserve every line of an order, or none: the ``Decision`` and the event it causes.

    ``available`` is the stock as it stands for this decision: {sku: quantity
    available, or None for an inactive product}, covering the order's skus (a
    missing sku is unknown). The caller holds it still (locked) until the
    decision is written, so the decision needs no further look.
    """
    requested = quantities_by_sku(lines)
    found = shortfalls(requested, available)
    if found:
        reasons = [shortfall.to_dict() for shortfall in found]
        return Decision(REJECTED, requested, reasons,
                        [(events.STOCK_REJECTED, {"order_id": order_id, "reasons": reasons})])
    return Decision(RESERVED, requested, None,
                    [(events.STOCK_RESERVED, {"order_id": order_id, "lines": as_lines(requested)})])


def cancel(order_id, reservation, products):
    """What an order's cancellation does to its reservation: the new status (or None) and its events.

    ``reservation`` is the order's decision (None if ``order_created`` has not
    arrived yet); ``products(sku)`` gives a product (locked) whose
    ``reserved`` is changed here. No decision yet: the tombstone status, so a
    late ``order_created`` reserves nothing. Reserved: every line given back.
    Anything else: nothing to do.
    """
    if reservation is None:
        return CANCELLED_BEFORE_RESERVATION, []
    if reservation.status != RESERVED:
        return None, []
    for sku, quantity in sorted(reservation.lines.items()):
        product = products(sku)
        product.reserved = released(product.reserved, quantity)
    return RELEASED, [(events.STOCK_RELEASED, {"order_id": order_id, "lines": as_lines(reservation.lines)})]


def change_product(product, changes):
    """Apply ``changes`` (name, price, active) to ``product``; the events it causes.

    Only a real change counts: it raises the version (orders keeps the newest
    version it saw) and announces the product.
    """
    if not any(getattr(product, key) != value for key, value in changes.items()):
        return []
    for key, value in changes.items():
        setattr(product, key, value)
    product.version += 1
    return [(events.PRODUCT_CHANGED, product)]
