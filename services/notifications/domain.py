"""What to tell a customer about an order, in plain Python."""

SUBJECTS = {
    "order_confirmed": "Your order {short_id} is confirmed",
    "order_rejected": "We could not take your order {short_id}",
    "order_cancelled": "Your order {short_id} is cancelled",
}


def money(cents):
    return "{}.{:02d}".format(cents // 100, cents % 100)


def compose(event_type, order):
    """Subject and plain-text body of the message for ``event_type``."""
    short_id = order["id"][:8]
    subject = SUBJECTS[event_type].format(short_id=short_id)
    lines = ["{quantity} x {name} ({sku}) at {price}".format(
        quantity=line["quantity"], name=line["name"], sku=line["sku"], price=money(line["unit_price"]))
        for line in order["lines"]]
    body = [subject + ".", ""] + lines + ["", "Total: {}".format(money(order["total"]))]
    if event_type == "order_rejected" and order.get("reasons"):
        body += ["", "Why:"] + ["- {sku}: {reason}".format(**reason) for reason in order["reasons"]]
    return subject, "\n".join(body)
