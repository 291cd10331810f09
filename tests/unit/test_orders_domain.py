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


CATALOGUE = {"A": ("Apple", 150), "B": ("Banana", 99)}


def test_placing_an_order_prices_it_and_causes_order_created():
    placed = domain.place("o-1", "ann@example.com", [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
                          CATALOGUE)
    assert (placed.lines, placed.total) == domain.price_lines(
        [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], CATALOGUE)
    assert [(event.name, data) for event, data in placed.events] == [("order_created", {
        "order_id": "o-1", "customer_email": "ann@example.com", "total": 399,
        "lines": [{"sku": "A", "quantity": 2, "unit_price": 150}, {"sku": "B", "quantity": 1, "unit_price": 99}]})]


def test_an_order_that_cannot_be_taken_causes_nothing():
    with pytest.raises(domain.UnknownProducts):
        domain.place("o-1", "ann@example.com", [{"sku": "Z", "quantity": 1}], CATALOGUE)
    with pytest.raises(domain.TotalTooLarge):
        domain.place("o-1", "ann@example.com", [{"sku": "A", "quantity": domain.MAX_ORDER_TOTAL}], CATALOGUE)


STORED = {"id": "o-1", "status": "pending", "customer_email": "ann@example.com", "total": 399, "reasons": None,
          "lines": [{"sku": "A", "quantity": 2}]}


@pytest.mark.parametrize("status,event", [
    ("confirmed", "order_confirmed"), ("rejected", "order_rejected"), ("cancelled", "order_cancelled"),
])
def test_each_move_causes_the_event_announcing_it_with_the_order_as_it_now_is(status, event):
    moved = domain.move(STORED, status, "now")
    assert moved.changes == {"status": status, "updated_at": "now"}
    assert [(declared.name, data) for declared, data in moved.events] == [
        (event, dict(STORED, status=status, updated_at="now"))]


def test_a_move_with_reasons_changes_and_announces_them():
    reasons = [{"sku": "A", "reason": "insufficient_stock"}]
    moved = domain.move(STORED, "rejected", "now", reasons)
    assert moved.changes == {"status": "rejected", "updated_at": "now", "reasons": reasons}
    assert moved.events[0][1]["reasons"] == reasons


def test_an_illegal_move_causes_nothing():
    with pytest.raises(domain.IllegalTransition):
        domain.move(dict(STORED, status="cancelled"), "confirmed", "now")


def test_every_move_the_state_machine_allows_announces_a_declared_event():
    from services.orders import events
    for ends in domain.ALLOWED.values():
        for end in ends:
            assert domain.ANNOUNCES[end] in events.PUBLISHED
