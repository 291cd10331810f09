"""A JSON front door on top of nameko's ``@http``.

Every response is JSON, errors included, in one shape:
``{"error": code, "message": text, "details": {field: [messages]}}``.
Unknown routes, wrong methods and oversized bodies are answered here, before
any worker runs, in the same shape as errors raised by handlers; every
response carries the request's correlation id in ``X-Request-ID``, and CORS
headers when the request's origin is allowed by ``CORS_ALLOWED_ORIGINS``.

No kind of HTTP traffic may starve the rest of the service (``HttpLimits``):
a request must arrive whole, body included, within ``HTTP_READ_TIMEOUT``
before any worker is spawned for it, so a slow or idle client holds only its
own connection; open connections are capped (``HTTP_MAX_CONNECTIONS``, excess
ones get a 503 at once) and so are HTTP workers (``HTTP_MAX_CONCURRENCY``, plus
a few slots of their own for /health and the other operations routes), and the
container's worker pool is grown by exactly those slots, so events and RPC
keep all ``MAX_WORKERS`` of theirs.
"""
import io
import json
import logging
import re
import socket
from collections import namedtuple
import time
from functools import partial

import eventlet
from eventlet.semaphore import Semaphore
from eventlet.wsgi import ChunkReadError
from marshmallow import ValidationError
from nameko.exceptions import RemoteError
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WEB_SERVER_CONFIG_KEY, HttpOnlyProtocol, WebServer, WsgiApp, parse_address
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from services.common.observability.correlation import CONTEXT_KEY, HTTP_HEADER, new_correlation_id
from services.common.errors import Forbidden, InvalidInput, ServiceError, ServiceUnavailable, is_unavailable, validation_error
from services.common.schema import load_input
from services.common.settings import PlatformSettings

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ENVIRON_KEY = "app.request_id"
# set by BoundedHttpProtocol for the app: the request's read deadline, and
# how to make the server close the connection after this response
DEADLINE_KEY = "app.read_deadline"
CLOSE_KEY = "app.close_connection"

# What a browser may send and read cross-origin (see ``Cors``).
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", HTTP_HEADER)
CORS_EXPOSED_HEADERS = (HTTP_HEADER, "Idempotent-Replayed", "Location", "Allow")
CORS_MAX_AGE = 600


def json_response(status, body, headers=None):
    return Response(json.dumps(body, default=str), status=status, headers=headers,
                    mimetype="application/json")


def error_body(code, message, details=None):
    """The one error shape; ``details`` is always present so clients need no check."""
    return {"error": code, "message": message, "details": details or {}}


def error_response(status, code, message, details=None, headers=None):
    return json_response(status, error_body(code, message, details), headers)


def service_error_response(exc):
    # an error may carry its own headers (WWW-Authenticate challenges, Retry-After)
    headers = getattr(exc, "headers", None) or ({"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


def _http_error_code(exc):
    return re.sub(r"[^a-z]+", "_", (exc.name or "error").lower()).strip("_")


def max_body_bytes(config):
    return PlatformSettings.from_config(config).max_body_bytes


def too_large(limit):
    return error_response(413, "payload_too_large", "The body is larger than {} bytes.".format(limit),
                          {"_body": ["At most {} bytes.".format(limit)]})


def too_busy(what):
    return error_response(503, ServiceUnavailable.code, "Too many {}; try again shortly.".format(what),
                          {"reason": ["too many {}".format(what)]}, {"Retry-After": "1"})


class HttpLimits(namedtuple("HttpLimits", "read_timeout max_connections max_concurrency queue_timeout")):
    """How much of a process HTTP clients may hold (config keys ``HTTP_*``, see config.yaml).

    ``read_timeout``: seconds a client has to send a whole request, from the
    first byte of its request line (or from the end of its previous request
    on a kept-alive connection) to the last byte of its body; also the
    timeout of every socket operation, writes included. ``max_connections``:
    open connections; more are answered 503 and closed. ``max_concurrency``:
    requests handled at once (each holds a worker); a request waits at most
    ``queue_timeout`` seconds for one of those slots, then gets a 503.
    """

    OPS_CONCURRENCY = 4  # /health, /ready, /metrics, /openapi.json: slots of their own

    @classmethod
    def from_config(cls, config):
        def number(key, default, kind=float):
            value = config.get(key)
            return kind(default if value in (None, "") else value)
        limits = cls(read_timeout=number("HTTP_READ_TIMEOUT", 10),
                     max_connections=number("HTTP_MAX_CONNECTIONS", 256, int),
                     max_concurrency=number("HTTP_MAX_CONCURRENCY", 20, int),
                     queue_timeout=number("HTTP_QUEUE_TIMEOUT", 1))
        for name, value in limits._asdict().items():
            if value <= 0 and name != "queue_timeout":
                raise ValueError("HTTP_{} must be greater than 0, not {}".format(name.upper(), value))
        return limits

    @property
    def worker_slots(self):
        """Workers HTTP may hold at most: what the container's pool grows by."""
        return self.max_concurrency + self.OPS_CONCURRENCY


class Throttled:
    """One WARNING per ``interval`` seconds for a refusal that can come in floods, with a count."""

    def __init__(self, what, interval=10.0):
        self.what = what
        self.interval = interval
        self.count = 0
        self.last = None

    def __call__(self, detail):
        self.count += 1
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            log.warning("HTTP 503: %s (%d since the last such line); e.g. %s", self.what, self.count, detail)
            self.last, self.count = now, 0
        else:
            log.debug("HTTP 503: %s: %s", self.what, detail)


class ClientGone(Exception):
    """The client closed or broke its connection before its request arrived whole."""


class BoundedHttpProtocol(HttpOnlyProtocol):
    """eventlet's HTTP/1.1 protocol with one deadline per request.

    eventlet only has a timeout per socket operation, so a client that sends a
    byte every few seconds, or a kept-alive connection that sends nothing,
    holds its connection forever. Here each request (waiting for its request
    line included) must arrive within ``read_timeout``; the app reads the body
    under the same deadline and cancels it before any worker runs. Overriding
    ``handle_one_request`` / ``get_environ`` of eventlet's protocol is the only
    way in: nameko's ``get_wsgi_server`` takes a protocol class and nothing else.
    """

    def handle_one_request(self):
        deadline = eventlet.Timeout(self.server.read_timeout)
        self._deadline = deadline
        try:
            super().handle_one_request()
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            self.close_connection = 1
            log.debug("HTTP client %s sent no whole request within %ss: closed",
                      self.client_address[0] if self.client_address else "?", self.server.read_timeout)
        finally:
            deadline.cancel()

    def get_environ(self):
        environ = super().get_environ()
        environ[DEADLINE_KEY] = self._deadline
        environ[CLOSE_KEY] = self._close_after_response
        return environ

    def _close_after_response(self):
        # read by eventlet when it writes the response headers (Connection:
        # close) and after the response (the rest of the body is not read)
        self.close_connection = 1


class QuietClientLog:
    """The logger eventlet's server writes to, with client failures kept quiet.

    eventlet logs a whole traceback at INFO when writing a response fails (the
    client went away) and at ERROR when a body it discards breaks off: both
    are the client's doing, so they go to DEBUG as one line. Access lines stay
    at INFO.
    """

    def __init__(self, logger):
        self.logger = logger

    def info(self, msg, *args, **kwargs):
        if str(msg).startswith("Traceback"):
            self.debug(msg)
        else:
            self.logger.info(msg, *args)

    def error(self, msg, *args, **kwargs):
        self.debug(msg, *args)

    def debug(self, msg, *args, **kwargs):
        text = str(msg) % args if args else str(msg)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        self.logger.debug("HTTP client I/O: %s", lines[-1] if lines else "")

    def write(self, msg, *args):
        self.debug(msg, *args)


class Cors:
    """Which origins may call the API from a browser.

    ``CORS_ALLOWED_ORIGINS`` is a comma-separated list of exact origins
    (``https://shop.example``) or ``*``; empty (the default) allows none, so
    browsers on other origins are refused by their own same-origin policy.
    """

    def __init__(self, setting):
        if isinstance(setting, (list, tuple)):
            origins = [str(origin).strip() for origin in setting]
        else:
            origins = [origin.strip() for origin in str(setting or "").split(",")]
        self.origins = {origin.rstrip("/") for origin in origins if origin}

    def allows(self, origin):
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    def headers(self, origin):
        if not self.allows(origin):
            return []
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", ", ".join(CORS_EXPOSED_HEADERS))]

    def preflight(self, origin, methods):
        """The answer to ``OPTIONS``: 204, with permissions only for an allowed origin."""
        allowed = sorted(set(methods) | {"OPTIONS"})
        response = Response(status=204, headers={"Allow": ", ".join(allowed)})
        if self.allows(origin):
            response.headers["Access-Control-Allow-Methods"] = ", ".join(allowed)
            response.headers["Access-Control-Allow-Headers"] = ", ".join(CORS_REQUEST_HEADERS)
            response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE)
        return response


class JsonWsgiApp(WsgiApp):
    def __init__(self, server):
        super().__init__(server)
        config = server.container.config
        self.max_body = max_body_bytes(config)
        self.cors = Cors(config.get("CORS_ALLOWED_ORIGINS"))
        self.read_timeout = server.limits.read_timeout

    def __call__(self, environ, start_response):
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not _REQUEST_ID.fullmatch(request_id):  # match() with $ takes a trailing newline
            request_id = new_correlation_id()
        environ[ENVIRON_KEY] = request_id
        cors_headers = self.cors.headers(environ.get("HTTP_ORIGIN", ""))

        def start_with_id(status, headers, exc_info=None):
            headers = [h for h in headers if h[0].lower() != HTTP_HEADER.lower()]
            headers.append((HTTP_HEADER, request_id))
            headers.extend(cors_headers)
            return start_response(status, headers, exc_info)

        refusal = self.take_body(environ)
        if refusal is not None:
            self._close(environ)
            return refusal(environ, start_with_id)
        return self.respond(environ)(environ, start_with_id)

    @staticmethod
    def _close(environ):
        close = environ.get(CLOSE_KEY)
        if close is not None:
            close()

    def take_body(self, environ):
        """Read the whole body, under the request's deadline, before anything else runs.

        The body is read here, in the connection's own green thread, so a
        client that sends it slowly holds no worker; the handler then reads
        it from memory. A chunked body is read like any other, to at most
        ``MAX_BODY_BYTES``. Returns a refusal (408, 413, 400, 501) or None.
        """
        deadline = environ.get(DEADLINE_KEY)
        try:
            return self._read_body(environ)
        except ClientGone as exc:
            # answered in case the client still reads; if it is gone for good,
            # eventlet's failed write is logged at DEBUG (QuietClientLog)
            log.info("HTTP client went away before its body arrived whole: %s %s (%s)",
                     environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")[:200], exc)
            return error_response(400, "incomplete_body", "The body ended before its announced length.",
                                  {"_body": ["Incomplete: {}.".format(exc)]})
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            log.info("HTTP client sent no whole body within %ss: %s %s", self.read_timeout,
                     environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")[:200])
            return error_response(408, "request_timeout",
                                  "The request did not arrive within {} seconds.".format(self.read_timeout),
                                  {"_body": ["Not received in time."]})
        finally:
            if deadline is not None:
                deadline.cancel()

    def _read_body(self, environ):
        stream = environ["wsgi.input"]
        coding = environ.get("HTTP_TRANSFER_ENCODING", "").strip().lower()
        try:
            if coding == "chunked":
                data = stream.read(self.max_body + 1)
                if len(data) > self.max_body:
                    return too_large(self.max_body)
            elif coding:
                # eventlet would take the body for the next request
                return error_response(501, "not_implemented",
                                      "Transfer-Encoding {!r} is not supported.".format(coding[:40]),
                                      {"Transfer-Encoding": ["Only chunked is supported."]})
            else:
                # eventlet has refused a Content-Length that is not a number >= 0
                length = int(environ.get("CONTENT_LENGTH") or 0)
                if length > self.max_body:
                    return too_large(self.max_body)
                data = stream.read(length) if length else b""
                if len(data) < length:
                    raise ClientGone("{} of {} bytes".format(len(data), length))
        except ChunkReadError as exc:
            return error_response(400, "malformed_body", "The chunked body is not valid.",
                                  {"_body": ["Bad chunk: {}".format(str(exc)[:80])]})
        except OSError as exc:
            raise ClientGone(type(exc).__name__) from None
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return None

    def respond(self, environ):
        request = Request(environ, shallow=True)
        request.max_content_length = self.max_body
        adapter = self.url_map.bind_to_environ(environ)
        try:
            if request.method == "OPTIONS":
                return self.cors.preflight(environ.get("HTTP_ORIGIN", ""), self._methods(adapter))
            provider, values = adapter.match()
            request.path_values = values
            return provider.handle_request(request)
        except RouteNotFound:
            return error_response(404, "not_found", "No such route: {} {}.".format(
                request.method, request.path), {"path": [request.path]})
        except MethodNotAllowed as exc:
            methods = sorted(set(exc.valid_methods or []) | {"OPTIONS"})
            return error_response(
                405, "method_not_allowed", "{} is not allowed here.".format(request.method),
                {"method": ["Allowed: {}.".format(", ".join(methods))]}, {"Allow": ", ".join(methods)})
        except HTTPException as exc:
            return error_response(exc.code or 400, _http_error_code(exc), exc.description)

    @staticmethod
    def _methods(adapter):
        """The methods routed at this path (werkzeug finds them by a failed match)."""
        try:
            adapter.match(method="--")
        except MethodNotAllowed as exc:
            return exc.valid_methods or []
        return []


class JsonWebServer(WebServer):
    """nameko's web server with ``HttpLimits``: deadlines, a connection cap, capped HTTP workers.

    The address comes from the config key the service class names in
    ``web_server_address_key`` (``WEB_SERVER_ADDRESS`` if it names none, as
    for orders): one config.yaml serves every service, so each service that
    serves HTTP needs a key of its own. A service with its own key and no
    value for it serves no HTTP, rather than share another one's port
    (eventlet's SO_REUSEPORT would let it, silently).
    """

    def __init__(self):
        super().__init__()
        self.limits = None
        self.listening = False
        self.slots = {}
        self.connections = 0
        self.refused = Throttled("connection refused: HTTP_MAX_CONNECTIONS open")
        self.busy = Throttled("every HTTP request slot busy (HTTP_MAX_CONCURRENCY)")

    def setup(self):
        self.limits = HttpLimits.from_config(self.container.config)
        self.slots = {False: Semaphore(self.limits.max_concurrency),
                      True: Semaphore(HttpLimits.OPS_CONCURRENCY)}
        # HTTP workers get slots of their own: the pool grows by exactly what
        # the semaphores let HTTP hold, so events, RPC and timers keep all
        # MAX_WORKERS of theirs. nameko has no public way to size the pool
        # apart from max_workers, which also sets the AMQP prefetch, so this
        # resizes the container's (private) pool.
        pool = self.container._worker_pool
        pool.resize(pool.size + self.limits.worker_slots)
        super().setup()

    @property
    def address_key(self):
        return getattr(self.container.service_cls, "web_server_address_key", WEB_SERVER_CONFIG_KEY)

    @property
    def bind_addr(self):
        return parse_address(str(self.container.config.get(self.address_key) or "0.0.0.0:8000"))

    def start(self):
        if self.address_key != WEB_SERVER_CONFIG_KEY and not self.container.config.get(self.address_key):
            log.info("HTTP: no %s configured; %s serves no HTTP", self.address_key, self.container.service_name)
            return
        self.listening = True
        super().start()

    def stop(self):
        if self.listening:
            super().stop()
            return
        self._is_accepting = False
        super(WebServer, self).stop()  # never listened: only its providers to wait for

    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def get_wsgi_server(self, sock, wsgi_app, protocol=BoundedHttpProtocol, debug=False):
        server = super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)
        # per socket operation, writes included; a little longer than the
        # request's deadline so that a slow read ends as a 408, not a reset
        server.socket_timeout = self.limits.read_timeout + 1
        server.read_timeout = self.limits.read_timeout
        server.log = QuietClientLog(logging.getLogger("nameko.web.server"))
        return server

    def run(self):
        """nameko's accept loop, with the connection cap."""
        while self._is_accepting:
            sock, addr = self._sock.accept()
            if self.connections >= self.limits.max_connections:
                self.refused("{} open".format(self.connections))
                self.container.spawn_managed_thread(partial(self.refuse, sock), identifier="http_refuse")
                continue
            sock.settimeout(self._serv.socket_timeout)
            self.connections += 1
            self.container.spawn_managed_thread(partial(self.process_request, sock, addr))

    def process_request(self, sock, address):
        """One connection; a client's socket failing is the client's business, not the service's.

        (nameko re-raises it, and an exception in a managed thread kills the container.)
        """
        try:
            super().process_request(sock, address)
        except (OSError, ChunkReadError) as exc:
            log.debug("HTTP connection from %s ended: %s: %s", address[0] if address else "?",
                      type(exc).__name__, exc)
            sock.close()
        finally:
            self.connections -= 1

    def refuse(self, sock):
        """A 503 for a connection over the cap, then a lingering close (so the client reads it)."""
        body = json.dumps(error_body(ServiceUnavailable.code, "Too many connections; try again shortly.",
                                     {"reason": ["too many connections"]})).encode()
        try:
            sock.settimeout(1)
            sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            sock.shutdown(socket.SHUT_WR)
            with eventlet.Timeout(1, False):
                while sock.recv(4096):
                    pass
        except OSError:
            pass
        finally:
            sock.close()

    def context_data_from_headers(self, request):
        return {CONTEXT_KEY: request.environ.get(ENVIRON_KEY) or new_correlation_id()}


class JsonHttpHandler(HttpRequestHandler):
    """``@http`` whose handlers return ``body``, ``(status, body)`` or ``(status, headers, body)`` (nameko's order)."""

    server = JsonWebServer()

    def __init__(self, method, url, expected_exceptions=ServiceError, ops=False, **kwargs):
        """``ops``: an operations route (/health, ...), served from slots of its own."""
        super().__init__(method, url, expected_exceptions=expected_exceptions, **kwargs)
        self.ops = ops

    def handle_request(self, request):
        """At most ``HTTP_MAX_CONCURRENCY`` requests hold a worker at once; others wait
        ``HTTP_QUEUE_TIMEOUT`` for a slot, then get a 503."""
        slots = self.server.slots[self.ops]
        if not slots.acquire(timeout=self.server.limits.queue_timeout):
            self.server.busy("{}{} {}".format("(operations) " if self.ops else "", request.method,
                                              request.path[:200]))
            return too_busy("requests")
        try:
            return super().handle_request(request)
        finally:
            slots.release()

    def response_from_result(self, result):
        """The handler's result as a response; this runs after its commit, so it cannot fail.

        Every input was validated before anything was written, so a header
        werkzeug refuses (a newline in a Location) is a bug; it is logged and
        the header left out, rather than answering 500 for a change that was
        made.
        """
        if isinstance(result, Response):
            return result
        headers = None
        if isinstance(result, tuple):  # nameko's shapes: (status, body) or (status, headers, body)
            status, *rest, body = result
            headers = rest[0] if rest else None
        else:
            status, body = 200, result
        response = json_response(status, body)
        for name, value in (headers or {}).items():
            try:
                response.headers[name] = value
            except (ValueError, TypeError) as exc:
                log.error("response header %s left out: %s", name, exc)
        return response

    def response_from_exception(self, exc):
        response, complain = self._answer(exc)
        if complain is not None:
            complain()
        return response

    def error_response(self, exc):
        """The JSON error the client gets for ``exc``; also what its trace line reports."""
        return self._answer(exc)[0]

    def _answer(self, exc):
        """``(response, complain)``: the client's answer and, for our own failures, how to log them.

        Client errors are not logged here: the trace line records them.
        """
        if is_unavailable(exc) and not isinstance(exc, ServiceError):
            return (error_response(503, ServiceUnavailable.code,
                                   "The service's database is unavailable; try again shortly.",
                                   {"reason": type(exc).__name__}, {"Retry-After": "1"}),
                    partial(log.warning, "HTTP 503: database unavailable: %s: %s", type(exc).__name__, exc))
        if isinstance(exc, ServiceError):
            return (service_error_response(exc),
                    partial(log.warning, "HTTP %s: %s", exc.status, exc) if exc.status >= 500 else None)
        if isinstance(exc, ValidationError):
            return service_error_response(validation_error(exc)), None
        if isinstance(exc, RequestEntityTooLarge):
            return too_large(max_body_bytes(self.container.config)), None
        if isinstance(exc, HTTPException):
            return error_response(exc.code or 400, _http_error_code(exc), exc.description), None
        if isinstance(exc, RemoteError):
            # another service failed in a way it did not expect: not the
            # client's fault and not ours to explain
            return (error_response(502, "upstream_error", "A service this request needs failed."),
                    partial(log.error, "a service this request needs failed: %s", exc))
        return (error_response(500, "internal_error", "Something went wrong on our side."),
                partial(log.error, "unhandled error in HTTP handler", exc_info=exc))


http = JsonHttpHandler.decorator


def is_json(mimetype):
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_json(request, schema=None, optional=False):
    """The request's JSON body (an object), validated by ``schema`` if given.

    A body must be sent as JSON (415 otherwise). With ``optional`` an empty
    body stands for ``{}``; without it an empty body is a 400.
    """
    data = request.get_data()
    if not data.strip():
        if optional:
            data = b"{}"
        else:
            raise InvalidInput("A JSON body is required.", details={"_body": ["Missing."]})
    elif not is_json(request.mimetype or ""):
        raise UnsupportedMediaType(
            "Send the body as application/json.",
            details={"Content-Type": ["Unsupported: {}.".format(request.mimetype or "none")]})
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MalformedJson("The body is not valid JSON: {}".format(exc),
                            details={"_body": ["Not valid JSON."]}) from None
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.", details={"_body": ["Must be a JSON object."]})
    return body if schema is None else load_input(schema, body)


def read_query(request, schema):
    """The query string, validated by ``schema`` (unknown parameters refused)."""
    return load_input(schema, request.args.to_dict(), "The query parameters are not valid.")


def read_headers(request, schema):
    """The headers ``schema`` names, validated like a body; other headers are not its business."""
    names = [field.data_key or name for name, field in schema.fields.items()]
    return load_input(schema, {name: request.headers[name] for name in names if name in request.headers},
                      "The request headers are not valid.")


class MalformedJson(InvalidInput):
    code = "malformed_json"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

