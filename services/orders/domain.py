"""Order rules in plain Python: no framework, no database.

An order's life is a small state machine. Every change of status goes
through ``transition`` so that an illegal move is refused in one place.
"""
PENDING = "pending"
CONFIRMED = "confirmed"
REJECTED = "rejected"
CANCELLED = "cancelled"

STATUSES = (PENDING, CONFIRMED, REJECTED, CANCELLED)

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


def is_newer(version, current):
    """The catalogue rule: a product change applies only over an older copy (or none).

    Events may arrive out of order or twice; versions only grow, so the
    newest one seen wins.
    """
    return current is None or version > current
