"""Order rules in plain Python: no framework, no database.

An order's life is a small state machine. Every change of status goes
through ``transition`` so that an illegal move is refused in one place.
The rules return the events they cause, as (declared event, data) pairs;
the use cases in ``handlers.py`` store what changed and stage those events.
"""
from collections import namedtuple

from . import events
from .statuses import CANCELLED, CONFIRMED, PENDING, REJECTED, STATUSES  # noqa: F401  (part of the domain's API)

ALLOWED = {
    PENDING: {CONFIRMED, REJECTED, CANCELLED},
    CONFIRMED: {CANCELLED},
    REJECTED: set(),
    CANCELLED: set(),
}

FINAL = {REJECTED, CANCELLED}


class IllegalTransition(Exception):
    def __init__(self, current, requested):
        super().__init__("An order that is {} cannot become {}.".format(current, requested))
        self.current = current
        self.requested = requested


class UnknownProducts(Exception):
    def __init__(self, skus):
        super().__init__("Unknown product(s): {}".format(", ".join(skus)))
        self.skus = skus


def transition(current, requested):
    """The new status, if ``current -> requested`` is a legal move."""
    if requested not in ALLOWED.get(current, ()):
        raise IllegalTransition(current, requested)
    return requested


def can_become(current, requested):
    return requested in ALLOWED.get(current, ())


# the event a move to each status causes (pending is announced by order_created)
ANNOUNCES = {CONFIRMED: events.ORDER_CONFIRMED, REJECTED: events.ORDER_REJECTED, CANCELLED: events.ORDER_CANCELLED}

Moved = namedtuple("Moved", "changes events")
Moved.__doc__ = """An order's move: the columns it changes (status, updated_at, and reasons
if given) and the events it causes, as (declared event, data) pairs."""


def move(order, requested, now, reasons=None):
    """Move ``order`` (as stored: a mapping with its status and lines) to ``requested`` at ``now``.

    The event announcing the new status carries the order as it is after the
    move. IllegalTransition if the move is not allowed.
    """
    changes = {"status": transition(order["status"], requested), "updated_at": now}
    if reasons is not None:
        changes["reasons"] = reasons
    return Moved(changes, [(ANNOUNCES[requested], dict(order, **changes))])


def price_lines(lines, catalogue):
    """Priced copies of ``lines`` and their total, at today's prices.

    ``catalogue`` maps sku to (name, unit price in cents) for products that
    can be ordered; every sku the order names must be in it.
    """
    unknown = sorted({line["sku"] for line in lines if line["sku"] not in catalogue})
    if unknown:
        raise UnknownProducts(unknown)
    priced = []
    for line in lines:
        name, unit_price = catalogue[line["sku"]]
        priced.append({"sku": line["sku"], "name": name, "quantity": line["quantity"],
                       "unit_price": unit_price, "line_total": unit_price * line["quantity"]})
    return priced, sum(line["line_total"] for line in priced)


# Totals are stored in a 32-bit integer column (cents).
MAX_ORDER_TOTAL = 2**31 - 1


class TotalTooLarge(Exception):
    def __init__(self, total):
        super().__init__("The order total {} exceeds the largest accepted total {}.".format(total, MAX_ORDER_TOTAL))
        self.total = total


def check_total(total):
    """Refuse a total the books cannot hold rather than fail on storing it."""
    if total > MAX_ORDER_TOTAL:
        raise TotalTooLarge(total)
    return total


Placed = namedtuple("Placed", "lines total events")
Placed.__doc__ = """A new order: its priced lines, its total and the events it causes,
as (declared event, data) pairs."""


def place(order_id, customer_email, lines, catalogue):
    """A new order's lines priced from ``catalogue`` (see ``price_lines``), its total, and the
    ``order_created`` event asking inventory to reserve them.

    UnknownProducts or TotalTooLarge if the order cannot be taken.
    """
    priced, total = price_lines(lines, catalogue)
    check_total(total)
    created = {"order_id": order_id, "customer_email": customer_email, "total": total,
               "lines": [{"sku": line["sku"], "quantity": line["quantity"], "unit_price": line["unit_price"]}
                         for line in priced]}
    return Placed(priced, total, [(events.ORDER_CREATED, created)])


def is_newer(version, current):
    """The catalogue rule: a product change applies only over an older copy (or none).

    Events may arrive out of order or twice; versions only grow, so the
    newest one seen wins.
    """
    return current is None or version > current
