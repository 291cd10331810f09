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
