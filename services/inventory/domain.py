"""Inventory rules in plain Python: no framework, no database.

Stock has two numbers that matter: ``on_hand`` (in the warehouse) and
``reserved`` (promised to confirmed orders). ``available = on_hand -
reserved`` never goes below zero, and an order's lines are reserved all
together or not at all.
"""
from dataclasses import dataclass

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
