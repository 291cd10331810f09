"""``/health`` and ``/ready`` for services that have no HTTP API of their own.

Inventory and notifications serve them beside ``/metrics`` on their metrics
port (``METRICS_PORTS`` in config.yaml; see ``metrics.Metrics``), so an
orchestrator can probe every service over HTTP: ``/health`` answers 200 while
the process serves requests at all (liveness), ``/ready`` answers 200 only when
the service's own broker and database answer within ``READY_TIMEOUT`` seconds
and 503 otherwise, with a JSON body saying which check failed (readiness).
Orders has the same two routes on its HTTP port (``services/orders/api.py``).
"""
import json

import eventlet
from kombu import Connection
from sqlalchemy import text

DEFAULT_READY_TIMEOUT = 1.0


def check_broker(amqp_uri, timeout):
    """'ok' if an AMQP connection (handshake included) opens within ``timeout``."""
    try:
        with eventlet.Timeout(timeout):
            with Connection(amqp_uri, connect_timeout=timeout) as connection:
                connection.connect()
        return "ok"
    except eventlet.Timeout:
        return "no answer within {}s".format(timeout)
    except Exception as exc:  # any failure to connect is "not ready"; the type only, never the URI
        return "unreachable: {}".format(type(exc).__name__)


def check_database(engine, timeout):
    """'ok' if ``SELECT 1`` answers within ``timeout``."""
    try:
        with eventlet.Timeout(timeout):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        return "ok"
    except eventlet.Timeout:
        return "no answer within {}s".format(timeout)
    except Exception as exc:  # driver errors carry the DSN: report the type only
        return "unreachable: {}".format(type(exc).__name__)


def _json(start_response, status, body):
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store")])
    return [payload]


def health_app(service, checks, fallback):
    """A WSGI app answering ``/health`` and ``/ready``, and handing anything else to ``fallback``.

    ``checks`` maps a check's name to a function of no arguments returning
    'ok' or what is wrong.
    """
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ("/health", "/ready"):
            return fallback(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed",
                         {"error": "method_not_allowed", "message": "Use GET."})
        if path == "/health":
            return _json(start_response, "200 OK", {"status": "ok", "service": service})
        results = {name: check() for name, check in checks.items()}
        ready = all(value == "ok" for value in results.values())
        return _json(start_response, "200 OK" if ready else "503 Service Unavailable",
                     {"status": "ready" if ready else "not_ready", "service": service,
                      "checks": results})
    return app
