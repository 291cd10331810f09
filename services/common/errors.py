"""Errors that cross service boundaries.

Each is registered with nameko so that an RPC caller gets the same exception
type back (not a generic ``RemoteError``), and each knows the HTTP status and
stable error code it maps to at the front door.
"""
from nameko.exceptions import deserialize_to_instance


class ServiceError(Exception):
    """Base class: ``code`` is stable for clients, ``status`` is for HTTP."""

    status = 500
    code = "internal_error"

    def __init__(self, message, details=None):
        super().__init__(message, details)
        self.message = message
        self.details = details or {}

    def __str__(self):
        return self.message


@deserialize_to_instance
class InvalidInput(ServiceError):
    """The caller sent something that can never succeed as sent."""

    status = 400
    code = "invalid_input"


@deserialize_to_instance
class NotFound(ServiceError):
    status = 404
    code = "not_found"


@deserialize_to_instance
class Conflict(ServiceError):
    """The request is valid but clashes with the current state."""

    status = 409
    code = "conflict"


@deserialize_to_instance
class Forbidden(ServiceError):
    """The caller may not do this: an HTTP token without the scope, or a service whose broker user may not call that method."""

    status = 403
    code = "forbidden"


@deserialize_to_instance
class ServiceUnavailable(ServiceError):
    """A service this request needs did not answer in time."""

    status = 503
    code = "service_unavailable"


@deserialize_to_instance
class InternalError(ServiceError):
    """What an RPC caller gets for a failure the service did not expect.

    Only the exception's type travels; its text (SQL, driver messages,
    values) stays in the service's log. Over HTTP it is a 502: the failure
    was in a service the request needed.
    """

    status = 502
    code = "upstream_error"


def validation_error(exc, message="The request is not valid."):
    """Turn a marshmallow ValidationError into InvalidInput naming each field."""
    details = exc.messages
    if not isinstance(details, dict):
        details = {"_schema": details}
    return InvalidInput(message, details=details)


DATA_ERROR_CLASSES = ("22", "23", "54")  # SQLSTATE classes that blame the value


def is_unavailable(exc):
    """True for errors that mean "a dependency is down or busy", not "a bug".

    A database that cannot be reached, dropped the connection or is locked
    (SQLAlchemy's OperationalError, a disconnect, an exhausted pool) will
    likely work again soon: callers get 503 and consumers keep retrying,
    instead of a 500 or a dead letter. A driver error that PostgreSQL
    classed as data (SQLSTATE class 22), integrity (23) or a program limit
    (54: a value too large for an index) is about the value, however the
    driver wrapped it (psycopg2 raises class 54 as OperationalError): not
    an outage.
    """
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, ServiceUnavailable):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "pgcode", None) or ""
    if sqlstate.startswith(DATA_ERROR_CLASSES):
        return False
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)
