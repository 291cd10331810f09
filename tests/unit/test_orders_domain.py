import pytest

from services.orders import domain


@pytest.mark.parametrize("current,requested", [
    ("pending", "confirmed"), ("pending", "rejected"), ("pending", "cancelled"), ("confirmed", "cancelled"),
])
def test_legal_moves(current, requested):
    assert domain.transition(current, requested) == requested


@pytest.mark.parametrize("current,requested", [
    ("confirmed", "rejected"), ("confirmed", "pending"), ("rejected", "confirmed"), ("rejected", "cancelled"),
    ("cancelled", "confirmed"), ("cancelled", "cancelled"), ("pending", "pending"), ("pending", "shipped"),
])
def test_illegal_moves_are_refused_naming_both_states(current, requested):
    with pytest.raises(domain.IllegalTransition) as error:
        domain.transition(current, requested)
    assert error.value.current == current
    assert error.value.requested == requested
    assert current in str(error.value) and requested in str(error.value)


def test_final_states_allow_nothing():
    for status in domain.FINAL:
        assert not any(domain.can_become(status, other) for other in domain.STATUSES)


def test_lines_are_priced_at_catalogue_prices():
    catalogue = {"A": ("Apple", 150), "B": ("Banana", 99)}
    priced, total = domain.price_lines([{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 3}], catalogue)
    assert priced == [
        {"sku": "A", "name": "Apple", "quantity": 2, "unit_price": 150, "line_total": 300},
        {"sku": "B", "name": "Banana", "quantity": 3, "unit_price": 99, "line_total": 297},
    ]
    assert total == 597


def test_unknown_skus_are_all_named():
    with pytest.raises(domain.UnknownProducts) as error:
        domain.price_lines([{"sku": "Z", "quantity": 1}, {"sku": "A", "quantity": 1}, {"sku": "Y", "quantity": 1}],
                           {"A": ("Apple", 1)})
    assert error.value.skus == ["Y", "Z"]
