"""Notifications' storage: the statements every order event runs, built once, and the lookups.

Building a statement costs more than running it; the per-event ones run as
Core on the session's connection (the ORM's identity map and flush were most
of their cost).
"""
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.orm import Session as OrmSession, selectinload

from .models import Notification, Preference

_preferences, _notifications = Preference.__table__, Notification.__table__
PREFERENCE = (select(_preferences.c.channels, _preferences.c.phone, _preferences.c.device_token)
              .where(_preferences.c.customer_email == bindparam("email")))
PREFERENCES = (select(_preferences.c.customer_email, _preferences.c.channels, _preferences.c.phone,
                      _preferences.c.device_token)
               .where(_preferences.c.customer_email.in_(bindparam("emails", expanding=True))))
INSERT_NOTIFICATIONS = insert(_notifications).returning(_notifications.c.id, sort_by_parameter_order=True)
_FOUND = "notifications.preferences"  # session.info keys: {email: choices or None} read for a batch,
_STAGED = "notifications.staged"  # and the rows to insert before the commit


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


def stage_notifications(session, rows):
    """``rows``, to be written with every other row this transaction stages, in one statement just
    before it commits; each row then has its ``id``. (A batch of events costs one INSERT, not one each.)"""
    session.info.setdefault(_STAGED, []).extend(rows)


@event.listens_for(OrmSession, "before_commit")
def _insert_staged(session):
    # registered once on the Session class, like the outbox's listeners: any session may have staged rows
    rows = session.info.pop(_STAGED, None)
    if rows:
        for row, id_ in zip(rows, session.connection().execute(INSERT_NOTIFICATIONS, rows).scalars()):
            row["id"] = id_


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
