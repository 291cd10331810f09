"""The message templates render every event for every channel, with the order's figures."""
import pytest

from services.notifications import domain
from services.notifications.rendering import Renderer

ORDER = {
    "id": "0123abcd-0000-4000-8000-000000000000", "status": "confirmed", "customer_email": "ann@example.com",
    "total": 2550,
    "lines": [{"sku": "MUG-1", "name": "Mug <b>big</b>", "quantity": 2, "unit_price": 1000},
              {"sku": "TEA-2", "name": "Tea", "quantity": 1, "unit_price": 550}],
    "reasons": None,
}

renderer = Renderer()


@pytest.mark.parametrize("event_type", domain.EVENT_TYPES)
@pytest.mark.parametrize("channel", domain.CUSTOMER_CHANNELS)
def test_every_event_renders_for_every_channel(event_type, channel):
    order = dict(ORDER, status=event_type.split("_")[1])
    content = renderer.render(event_type, channel, order)
    assert "0123abcd" in content.subject + content.body
    assert "25.50" in content.body
    assert "{{" not in content.body and "{%" not in content.body
    if channel == "email":
        assert content.html.startswith("<!DOCTYPE html>")
    else:
        assert content.html is None
        assert len(content.body) <= 160


def test_confirmed_email_lists_lines_totals_and_status():
    content = renderer.render("order_confirmed", "email", ORDER)
    assert content.subject == "Your order 0123abcd is confirmed"
    assert "2 x Mug <b>big</b> (MUG-1) at 10.00 = 20.00" in content.body
    assert "1 x Tea (TEA-2) at 5.50 = 5.50" in content.body
    assert "Total: 25.50" in content.body
    assert "Status: confirmed" in content.body
    assert ORDER["id"] in content.body


def test_html_escapes_what_customers_and_staff_typed():
    html = renderer.render("order_confirmed", "email", ORDER).html
    assert "Mug &lt;b&gt;big&lt;/b&gt;" in html
    assert "<b>big</b>" not in html
    assert ">25.50<" in html


def test_rejection_says_why_in_words():
    order = dict(ORDER, status="rejected",
                 reasons=[{"sku": "MUG-1", "reason": "insufficient_stock", "requested": 2, "available": 1},
                          {"sku": "TEA-2", "reason": "unknown_sku", "requested": 1, "available": 0}])
    content = renderer.render("order_rejected", "email", order)
    assert "MUG-1: not enough in stock (1 left, 2 asked for)" in content.body
    assert "TEA-2: not a product we sell" in content.body
    assert "MUG-1, TEA-2 unavailable" in renderer.render("order_rejected", "sms", order).body


def test_push_has_a_title_and_a_short_text():
    content = renderer.render("order_cancelled", "push", dict(ORDER, status="cancelled"))
    assert content.subject == "Order cancelled"
    assert content.body == "Your order 0123abcd (25.50) is cancelled."
    sms = renderer.render("order_confirmed", "sms", ORDER)
    assert sms.body == "Order 0123abcd confirmed: 3 items, total 25.50. Thank you!"


def test_a_template_naming_a_missing_value_fails_loudly(tmp_path):
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "order_confirmed.subject.txt").write_text("Hi {{ order.nickname }}")
    with pytest.raises(Exception, match="nickname"):
        Renderer(str(tmp_path)).render("order_confirmed", "email", ORDER)
