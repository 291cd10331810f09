"""A JSON front door on top of nameko's ``@http``.

Every response is JSON, errors included, in one shape:
``{"error": code, "message": text, "details": {field: [messages]}}``.
Unknown routes, wrong methods and oversized bodies are answered here, before
any worker runs, in the same shape as errors raised by handlers; every
response carries the request's correlation id in ``X-Request-ID``, and CORS
headers when the request's origin is allowed by ``CORS_ALLOWED_ORIGINS``.
"""
import json
import logging
import re
from functools import partial

from marshmallow import ValidationError
from nameko.exceptions import RemoteError
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, WsgiApp
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from .correlation import CONTEXT_KEY, HTTP_HEADER, new_correlation_id
from .errors import InvalidInput, ServiceError, ServiceUnavailable, is_unavailable, validation_error
from .schema import load_input

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ENVIRON_KEY = "app.request_id"

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
    return int(config.get("MAX_BODY_BYTES") or DEFAULT_MAX_BODY)


def too_large(limit):
    return error_response(413, "payload_too_large", "The body is larger than {} bytes.".format(limit),
                          {"_body": ["At most {} bytes.".format(limit)]})


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

    def __call__(self, environ, start_response):
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not _REQUEST_ID.match(request_id):
            request_id = new_correlation_id()
        environ[ENVIRON_KEY] = request_id
        cors_headers = self.cors.headers(environ.get("HTTP_ORIGIN", ""))

        def start_with_id(status, headers, exc_info=None):
            headers = [h for h in headers if h[0].lower() != HTTP_HEADER.lower()]
            headers.append((HTTP_HEADER, request_id))
            headers.extend(cors_headers)
            return start_response(status, headers, exc_info)

        return self.respond(environ)(environ, start_with_id)

    def respond(self, environ):
        request = Request(environ, shallow=True)
        request.max_content_length = self.max_body
        if request.content_length is not None and request.content_length > self.max_body:
            return too_large(self.max_body)
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
    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def context_data_from_headers(self, request):
        return {CONTEXT_KEY: request.environ.get(ENVIRON_KEY) or new_correlation_id()}


class JsonHttpHandler(HttpRequestHandler):
    """``@http`` whose handlers return ``body``, ``(status, body)`` or ``(status, body, headers)``."""

    server = JsonWebServer()

    def __init__(self, method, url, expected_exceptions=ServiceError, **kwargs):
        super().__init__(method, url, expected_exceptions=expected_exceptions, **kwargs)

    def response_from_result(self, result):
        if isinstance(result, Response):
            return result
        headers = None
        if isinstance(result, tuple):
            status, body, *rest = result
            headers = rest[0] if rest else None
        else:
            status, body = 200, result
        return json_response(status, body, headers)

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


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"
