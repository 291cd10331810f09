"""Rate limits of POST /orders, shared by every orders process.

A fixed-window counter per bucket (``customer:<sub>`` or ``address:<ip>``)
lives in the orders database, the one place all orders processes see (Redis
is not part of this stack). Each request adds one with an atomic upsert
(``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, on SQLite and
PostgreSQL alike) in its own short transaction, so two processes counting
one caller at the same moment both count, and a refused request still
counts. Windows that have ended are deleted by a timer in the service.
"""
import time

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite

from services.common.errors import ServiceError

from .models import RateLimitCounter

_counters = RateLimitCounter.__table__


class TooManyRequests(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after, field):
        message = "Too many requests; try again in {} seconds.".format(retry_after)
        super().__init__(message, details={field: [message]})
        self.headers = {"Retry-After": str(retry_after)}


def _upsert(dialect_name):
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    statement = insert(_counters).values(count=1)
    return statement.on_conflict_do_update(
        index_elements=[_counters.c.bucket, _counters.c.window_start],
        set_={"count": _counters.c.count + 1}).returning(_counters.c.count)


def hit(session, bucket, limit, window, now=None):
    """Count one request in ``bucket``; raise ``TooManyRequests`` beyond ``limit`` per ``window`` s.

    A limit of 0 or less switches the limit off (nothing is written).
    """
    if limit <= 0:
        return
    now = time.time() if now is None else now
    window = max(1, int(window))
    start = int(now // window) * window
    connection = session.connection()
    count = connection.execute(_upsert(connection.dialect.name),
                               {"bucket": bucket[:300], "window_start": start}).scalar_one()
    if count > limit:
        retry_after = max(1, int(start + window - now + 0.999))
        field = "Authorization" if bucket.startswith("customer:") else "client"
        raise TooManyRequests(retry_after, field)


def forget_ended(session, window, now=None):
    """Delete the counters of windows that have ended; how many went."""
    now = time.time() if now is None else now
    cutoff = int(now) - max(1, int(window))
    return session.execute(delete(RateLimitCounter).where(RateLimitCounter.window_start < cutoff)).rowcount
