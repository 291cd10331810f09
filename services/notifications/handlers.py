"""Notifications' use cases: each takes a unit of work (open), the rules are in ``domain.py``.

``notify`` is the effect of every order event: it renders and records one
notification per channel the customer chose, and hands them to the sender
once the unit of work commits (the sender delivers outside any handler).
"""
import logging

from marshmallow import ValidationError

from services.common.errors import Conflict, NotFound
from services.common.messaging.events import utcnow
from services.common.validation import normalise_email

from . import domain, store
from .models import Preference
from .rendering import Renderer
from .schemas import NotificationSchema, PreferencesOutSchema

log = logging.getLogger(__name__)

notification_schema = NotificationSchema()
preferences_schema = PreferencesOutSchema()
renderer = Renderer()


def preference_key(email):
    """Preferences are keyed by the address in its normal form, the one orders stores.

    Events from before that rule may carry another case: normalised here too
    (an address that no longer passes is used as it came, lowercased).
    """
    try:
        return normalise_email(email.strip())
    except ValidationError:
        return email.strip().lower()


def notify(uow, event, event_type, sender, correlation_id):
    """Queue one notification per channel the customer chose; the sender gets them after commit."""
    order = event.data
    planned = domain.plan_deliveries(store.preference(uow.session, preference_key(order["customer_email"])),
                                     order["customer_email"], sender.configured)
    now = utcnow()
    rows = []
    for delivery in planned:
        content = renderer.render(event_type, delivery.template, order)
        rows.append({
            "event_id": event.id, "event_type": event_type, "order_id": order["id"],
            "recipient": order["customer_email"], "channel": delivery.channel,
            "address": delivery.address, "subject": content.subject[:200], "body": content.body,
            "html_body": content.html, "status": delivery.status, "last_error": delivery.reason,
            "next_attempt_at": now if delivery.status == domain.QUEUED else None,
            "attempt_count": 0, "round_attempts": 0, "correlation_id": correlation_id,
            "created_at": now, "updated_at": now, "sent_at": None})
    # with room to send at once, the rows are written claimed by this
    # process and handed to the sender after commit: no claim round
    claimed = sender.claim_on_write(rows, now)
    uow.after_rollback(lambda: sender.release(rows, claimed, uow.commit_failed))
    store.stage_notifications(uow.session, rows)
    uow.after_commit(lambda: _queued(sender, rows, order, event_type, planned))


def look_up_preferences(uow, events):
    """Before a batch of order events: their customers' choices, in one query."""
    store.look_up_preferences(uow.session, {preference_key(event.data["customer_email"]) for event in events})


def _queued(sender, rows, order, event_type, planned):
    sender.written(rows)
    for delivery in planned:
        if delivery.status == domain.SKIPPED:
            log.warning("order %s: %s notification skipped: %s", order["id"], delivery.channel, delivery.reason)
    log.info("order %s: %s queued for %s via %s", order["id"], event_type,
             domain.mask(order["customer_email"]), ", ".join(d.channel for d in planned) or "no channel")


def list_notifications(uow, query):
    found = store.notifications(uow.session, query["limit"], **{
        column: query.get(column) for column in ("order_id", "recipient", "status", "channel")})
    return notification_schema.dump(found, many=True)


def get_notification(uow, notification_id):
    return notification_schema.dump(_notification(uow.session, notification_id))


def retry_notification(uow, notification_id):
    """Queue a failed notification again, with a fresh set of attempts (Conflict if it is not failed)."""
    notification = _notification(uow.session, notification_id, for_update=True)
    try:
        domain.check_retryable(notification.status, notification.last_error)
    except domain.NotRetryable as exc:
        raise Conflict(str(exc), details={"status": [notification.status]}) from None
    notification.status = domain.QUEUED
    notification.round_attempts = 0
    notification.next_attempt_at = utcnow()
    uow.session.flush()
    return notification_schema.dump(notification)


def set_preferences(uow, data):
    key = preference_key(data["customer_email"])
    preference = uow.session.get(Preference, key)
    if preference is None:
        preference = Preference(customer_email=key)
        uow.session.add(preference)
    preference.channels = list(data["channels"])
    preference.phone = data["phone"]
    preference.device_token = data["device_token"]
    preference.updated_at = utcnow()
    uow.session.flush()
    return preferences_schema.dump(preference)


def get_preferences(uow, customer_email):
    """The customer's choices; without any, the default (email only, ``updated_at`` null)."""
    key = preference_key(customer_email)
    preference = uow.session.get(Preference, key)
    if preference is None:
        return {"customer_email": key, "channels": list(domain.DEFAULT_CHANNELS), "phone": None,
                "device_token": None, "updated_at": None}
    return preferences_schema.dump(preference)


def _notification(session, notification_id, for_update=False):
    notification = store.notification(session, notification_id, for_update)
    if notification is None:
        raise NotFound("No notification with id {}.".format(notification_id),
                       details={"notification_id": [str(notification_id)]})
    return notification
