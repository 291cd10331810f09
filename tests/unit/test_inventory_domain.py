import pytest

from services.inventory import domain


def test_quantities_are_summed_per_sku_in_sku_order():
    lines = [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}]
    assert list(domain.quantities_by_sku(lines).items()) == [("A", 2), ("B", 4)]


def test_an_order_that_fits_has_no_shortfalls():
    assert domain.shortfalls({"A": 2, "B": 5}, {"A": 2, "B": 9}) == []


def test_every_line_that_does_not_fit_is_explained():
    found = domain.shortfalls({"A": 3, "B": 1, "C": 1, "D": 1}, {"A": 2, "B": 1, "D": None})
    assert [s.to_dict() for s in found] == [
        {"sku": "A", "reason": "insufficient_stock", "requested": 3, "available": 2},
        {"sku": "C", "reason": "unknown_sku", "requested": 1, "available": 0},
        {"sku": "D", "reason": "product_inactive", "requested": 1, "available": 0},
    ]


def test_release_cannot_free_more_than_is_reserved():
    assert domain.released(5, 5) == 0
    with pytest.raises(domain.InventoryRuleBroken):
        domain.released(2, 3)


def test_a_reservation_takes_every_line_and_announces_it():
    lines = [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}]
    decision = domain.reserve("o-1", lines, {"A": 2, "B": 4, "C": 0})
    assert (decision.status, decision.lines, decision.reasons) == (domain.RESERVED, {"A": 2, "B": 4}, None)
    assert [(event.name, data) for event, data in decision.events] == [
        ("stock_reserved", {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 4}]})]


def test_a_line_that_does_not_fit_rejects_the_whole_order_with_every_reason():
    lines = [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 2}, {"sku": "C", "quantity": 1}]
    decision = domain.reserve("o-1", lines, {"A": 5, "B": 1, "C": None})
    assert decision.status == domain.REJECTED
    reasons = [{"sku": "B", "reason": "insufficient_stock", "requested": 2, "available": 1},
               {"sku": "C", "reason": "product_inactive", "requested": 1, "available": 0}]
    assert [(event.name, data) for event, data in decision.events] == [
        ("stock_rejected", {"order_id": "o-1", "reasons": reasons})]


class Held:
    def __init__(self, status, lines):
        self.status, self.lines = status, lines


class Stocked:
    def __init__(self, reserved):
        self.reserved = reserved


def test_cancelling_before_the_reservation_leaves_a_tombstone_and_announces_nothing():
    assert domain.cancel("o-1", None, products=None) == (domain.CANCELLED_BEFORE_RESERVATION, [])


def test_cancelling_a_reservation_gives_every_line_back_once():
    products = {"A": Stocked(3), "B": Stocked(1)}
    status, caused = domain.cancel("o-1", Held(domain.RESERVED, {"B": 1, "A": 2}), products.get)
    assert status == domain.RELEASED and (products["A"].reserved, products["B"].reserved) == (1, 0)
    assert [(event.name, data) for event, data in caused] == [
        ("stock_released", {"order_id": "o-1", "lines": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]})]
    assert domain.cancel("o-1", Held(domain.RELEASED, {"A": 2}), products.get) == (None, [])
    assert domain.cancel("o-1", Held(domain.REJECTED, {"A": 2}), products.get) == (None, [])


class Product:
    def __init__(self):
        self.name, self.price, self.active, self.version = "Apple", 100, True, 1


def test_only_a_real_product_change_raises_the_version_and_is_announced():
    product = Product()
    assert domain.change_product(product, {"price": 100}) == [] and product.version == 1
    caused = domain.change_product(product, {"price": 120, "name": "Apple"})
    assert product.version == 2 and product.price == 120
    assert [(event.name, data) for event, data in caused] == [("product_changed", product)]
