"""Notification rules in plain Python: no framework, no database, no I/O.

Who gets told through which channel, what a failed attempt means for a
notification (try again later, or give up), and how long to wait before the
next try. The service and the sender apply these rules; the unit tests pin
them down.
"""
import random
from collections import namedtuple

# Channels a customer can choose, and the one that stands in for email when
# no SMTP server is configured (it only writes the message to the log).
EMAIL = "email"
SMS = "sms"
PUSH = "push"
LOG = "log"
CUSTOMER_CHANNELS = (EMAIL, SMS, PUSH)
DEFAULT_CHANNELS = (EMAIL,)

EVENT_TYPES = ("order_confirmed", "order_rejected", "order_cancelled")

# A notification's life: queued -> sending -> sent | queued (retry) | failed;
# skipped when its channel cannot be used at all.
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (QUEUED, SENDING, SENT, FAILED, SKIPPED)
RETRYABLE = (FAILED,)

# What one attempt came to.
OUTCOME_SENT = "sent"
OUTCOME_TRANSIENT = "transient_error"
OUTCOME_PERMANENT = "permanent_error"
OUTCOME_SKIPPED = "skipped"

# The setting an operator must provide before a channel can be used.
CHANNEL_SETTING = {EMAIL: "SMTP_HOST", SMS: "SMS_WEBHOOK_URL", PUSH: "PUSH_WEBHOOK_URL"}
# The preference a channel needs to know where to deliver.
ADDRESS_FIELD = {SMS: "phone", PUSH: "device_token"}


class DeliveryError(Exception):
    """A channel could not deliver; ``permanent`` says whether trying again can help."""

    permanent = False

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class TransientFailure(DeliveryError):
    """Server down, timeout, 4xx SMTP reply, 5xx HTTP reply: may work later."""


class PermanentFailure(DeliveryError):
    """Address refused, request rejected: the same message will never go through."""

    permanent = True


class NotRetryable(Exception):
    def __init__(self, status, reason=None):
        message = "A notification that is {} cannot be retried.".format(status)
        if reason:
            message += " ({})".format(reason)
        super().__init__(message)
        self.status = status


Delivery = namedtuple("Delivery", "channel template address status reason")
Decision = namedtuple("Decision", "status delay error")


def plan_deliveries(preferences, customer_email, configured):
    """One ``Delivery`` per channel the customer should be told through.

    ``preferences`` is a dict with ``channels``, ``phone`` and
    ``device_token`` (None: the defaults, email only); ``configured`` is the
    set of channels this deployment can use. Email falls back to the log
    channel when SMTP is not configured, so every order leaves a trace; any
    other channel that cannot be used is planned as skipped, with the reason,
    so that the history says why the customer heard nothing there.
    """
    preferences = preferences or {}
    channels = preferences.get("channels")
    if channels is None:
        channels = DEFAULT_CHANNELS
    planned = []
    for channel in channels:
        if channel == EMAIL:
            used = EMAIL if EMAIL in configured else LOG
            planned.append(Delivery(used, EMAIL, customer_email, QUEUED, None))
            continue
        address = preferences.get(ADDRESS_FIELD[channel])
        if channel not in configured:
            planned.append(Delivery(channel, channel, address, SKIPPED,
                                    "{} is not configured ({} is not set)".format(channel, CHANNEL_SETTING[channel])))
        elif not address:
            planned.append(Delivery(channel, channel, address, SKIPPED,
                                    "no {} in the customer's preferences".format(ADDRESS_FIELD[channel])))
        else:
            planned.append(Delivery(channel, channel, address, QUEUED, None))
    return planned


def backoff_delay(failed_attempts, base, cap, rng=random):
    """Seconds to wait after the ``failed_attempts``-th failure in a row.

    Exponential (base, 2*base, 4*base, ... up to ``cap``) with jitter: the
    delay is drawn from the upper half of that step, so retries of many
    notifications that failed together (the mail server went down) spread
    out instead of hitting the server again all at the same moment.
    """
    ceiling = min(cap, base * 2 ** max(failed_attempts - 1, 0))
    return rng.uniform(ceiling / 2, ceiling)


def after_attempt(error, attempts_in_round, max_attempts, base, cap, rng=random):
    """What becomes of a notification after an attempt.

    ``error`` is None when the attempt delivered, else a ``DeliveryError``;
    ``attempts_in_round`` counts the attempts since the notification was last
    queued (by its event or by an operator's retry), this one included.
    """
    if error is None:
        return Decision(SENT, None, None)
    if error.permanent or attempts_in_round >= max_attempts:
        return Decision(FAILED, None, error.message)
    return Decision(QUEUED, backoff_delay(attempts_in_round, base, cap, rng), error.message)


def outcome_of(error):
    if error is None:
        return OUTCOME_SENT
    return OUTCOME_PERMANENT if error.permanent else OUTCOME_TRANSIENT


def check_retryable(status, reason=None):
    """Only a notification that gave up can be retried by hand."""
    if status not in RETRYABLE:
        raise NotRetryable(status, reason)


def smtp_failure(code, text):
    """An SMTP reply code as a failure: 5xx never will pass, 4xx may later.

    Anything else (no code, a garbled reply) is treated as the server's
    trouble and tried again.
    """
    message = "SMTP {}: {}".format(code, text)
    if 500 <= code < 600:
        return PermanentFailure(message)
    return TransientFailure(message)


def http_failure(status, text):
    """A provider's HTTP answer as a failure.

    5xx, 408 (timeout) and 429 (rate limited) are the provider's trouble and
    may pass; any other 4xx means it refuses this request as sent.
    """
    message = "HTTP {}: {}".format(status, text[:200])
    if status >= 500 or status in (408, 429):
        return TransientFailure(message)
    return PermanentFailure(message)


def mask(address):
    """An address fit for logs: enough to recognise, not enough to harvest."""
    if not address:
        return "-"
    if "@" in address:
        name, _, domain_part = address.partition("@")
        return "{}***@{}".format(name[:1], domain_part)
    return "***" + address[-4:]


def money(cents):
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return "{}{}.{:02d}".format(sign, cents // 100, cents % 100)


REASON_TEXT = {
    "insufficient_stock": "not enough in stock ({available} left, {requested} asked for)",
    "unknown_sku": "not a product we sell",
    "product_inactive": "no longer sold",
}


def reason_text(reason):
    """A shortfall as a customer would say it; unknown codes pass through."""
    template = REASON_TEXT.get(reason.get("reason"))
    if template is None:
        return str(reason.get("reason", "unavailable")).replace("_", " ")
    try:
        return template.format(**reason)
    except (KeyError, IndexError):
        return template.split(" (")[0]


def template_context(event_type, order):
    """What the templates see: the order, with the figures they print."""
    lines = [dict(line, line_total=line["quantity"] * line["unit_price"]) for line in order["lines"]]
    reasons = [dict(reason, text=reason_text(reason)) for reason in (order.get("reasons") or [])]
    return {
        "event_type": event_type,
        "order": {
            "id": order["id"],
            "short_id": order["id"][:8],
            "status": order["status"],
            "customer_email": order["customer_email"],
            "lines": lines,
            "item_count": sum(line["quantity"] for line in lines),
            "total": order["total"],
            "reasons": reasons,
        },
    }
