"""Notifications' storage: the statements every order event runs, built once, and the lookups.

Building a statement costs more than running it; the per-event ones run as
Core on the session's connection (the ORM's identity map and flush were most
of their cost).
"""
from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import selectinload

from .models import Notification, Preference

_preferences, _notifications = Preference.__table__, Notification.__table__
PREFERENCE = (select(_preferences.c.channels, _preferences.c.phone, _preferences.c.device_token)
              .where(_preferences.c.customer_email == bindparam("email")))
PREFERENCES = (select(_preferences.c.customer_email, _preferences.c.channels, _preferences.c.phone,
                      _preferences.c.device_token)
               .where(_preferences.c.customer_email.in_(bindparam("emails", expanding=True))))
INSERT_NOTIFICATIONS = insert(_notifications).returning(_notifications.c.id, sort_by_parameter_order=True)
_FOUND = "notifications.preferences"  # session.info key: {email: choices or None} read for a batch


def look_up_preferences(session, emails):
    """The choices of all of ``emails`` in one query, for ``preference`` to answer from."""
    found = session.info.setdefault(_FOUND, {})
    found.update(dict.fromkeys(emails))
    for row in session.connection().execute(PREFERENCES, {"emails": sorted(emails)}):
        found[row.customer_email] = _choices(row)


def preference(session, email):
    """The customer's choices as ``domain.plan_deliveries`` takes them, or None."""
    found = session.info.get(_FOUND, {})
    if email in found:
        return found[email]
    row = session.connection().execute(PREFERENCE, {"email": email}).first()
    return None if row is None else _choices(row)


def _choices(row):
    return {"channels": row.channels, "phone": row.phone, "device_token": row.device_token}


def insert_notifications(session, rows):
    """The rows, written; their ids in the same order."""
    return session.connection().execute(INSERT_NOTIFICATIONS, rows).scalars().all() if rows else []


def notifications(session, limit, **equal):
    """Up to ``limit`` notifications with their attempts, oldest first, filtered by the columns given."""
    statement = (select(Notification).options(selectinload(Notification.attempts))
                 .order_by(Notification.id).limit(limit))
    for column, value in equal.items():
        if value is not None:
            statement = statement.where(getattr(Notification, column) == value)
    return session.scalars(statement).all()


def notification(session, notification_id, for_update=False):
    """The notification with its attempts, or None."""
    statement = (select(Notification).options(selectinload(Notification.attempts))
                 .where(Notification.id == notification_id))
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()
