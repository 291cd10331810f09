"""Liveness and readiness checks shared by the services.

Orders answers ``/health`` and ``/ready`` on its API port; inventory and
notifications (which have no API port) answer them on their metrics port
(``metrics.py``). Ready means: this process can do its work now, i.e. the
broker and its own database answer within the timeout. Other services are
never checked: a service that can queue its work must not be taken out of a
load balancer because another one is down.
"""
import json

import eventlet
from kombu import Connection
from sqlalchemy import text

from services.common.db.database import read_only


def check_broker(amqp_uri, timeout, ssl=None):
    """'ok' if an AMQP connection (handshake included) opens within ``timeout``."""
    try:
        with eventlet.Timeout(timeout):
            with Connection(amqp_uri, connect_timeout=timeout, ssl=ssl) as connection:
                connection.connect()
        return "ok"
    except eventlet.Timeout:
        return "no answer within {}s".format(timeout)
    except Exception as exc:  # any failure to connect is "not ready", whatever its type
        return "unreachable: {}".format(type(exc).__name__)


def check_database(connect, timeout):
    """'ok' if ``SELECT 1`` runs within ``timeout``; ``connect()`` gives a context-managed connection or session."""
    try:
        with eventlet.Timeout(timeout):
            with connect() as connection:
                read_only(connection).execute(text("SELECT 1"))
        return "ok"
    except eventlet.Timeout:
        return "no answer within {}s".format(timeout)
    except Exception as exc:  # an unreachable database, whatever the driver raises
        return "unreachable: {}".format(type(exc).__name__)


def readiness(checks):
    """``(status, body)`` of a readiness answer from ``{name: "ok" | what failed}``."""
    ready = all(value == "ok" for value in checks.values())
    return (200 if ready else 503), {"status": "ready" if ready else "not_ready", "checks": checks}


def json_wsgi(status, body, start_response):
    """A WSGI JSON answer (for the metrics port's plain WSGI server)."""
    data = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}.get(status, "")
    start_response("{} {}".format(status, reason), [("Content-Type", "application/json"),
                                                    ("Content-Length", str(len(data)))])
    return [data]
