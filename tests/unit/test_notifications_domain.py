from services.notifications import domain

ORDER = {"id": "0123456789abcdef", "customer_email": "c@example.com", "total": 2597,
         "lines": [{"sku": "A", "name": "Apple", "quantity": 2, "unit_price": 1299}]}


def test_money_is_printed_from_integer_cents():
    assert domain.money(2597) == "25.97"
    assert domain.money(5) == "0.05"


def test_confirmation_names_the_order_its_lines_and_total():
    subject, body = domain.compose("order_confirmed", ORDER)
    assert subject == "Your order 01234567 is confirmed"
    assert "2 x Apple (A) at 12.99" in body
    assert "Total: 25.97" in body


def test_rejection_says_why():
    order = dict(ORDER, reasons=[{"sku": "A", "reason": "insufficient_stock"}])
    subject, body = domain.compose("order_rejected", order)
    assert "could not" in subject
    assert "- A: insufficient_stock" in body
