"""A JSON front door on top of nameko's ``@http``.

Every response is JSON, errors included, in one shape:
``{"error": code, "message": text, "details": {field: [messages]}}``.
Unknown routes and wrong methods (answered by werkzeug before any worker
runs) get the same treatment as errors raised by handlers, and every
response carries the request's correlation id in ``X-Request-ID``.
"""
import json
import logging
import re

from marshmallow import ValidationError
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, WsgiApp
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from .correlation import CONTEXT_KEY, HTTP_HEADER, new_correlation_id
from .errors import InvalidInput, ServiceError, validation_error

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ENVIRON_KEY = "app.request_id"


def json_response(status, body, headers=None):
    return Response(json.dumps(body, default=str), status=status, headers=headers,
                    mimetype="application/json")


def error_response(status, code, message, details=None):
    body = {"error": code, "message": message}
    if details:
        body["details"] = details
    return json_response(status, body)


def _http_error_code(exc):
    return re.sub(r"[^a-z]+", "_", (exc.name or "error").lower()).strip("_")


class JsonWsgiApp(WsgiApp):
    def __call__(self, environ, start_response):
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not _REQUEST_ID.match(request_id):
            request_id = new_correlation_id()
        environ[ENVIRON_KEY] = request_id

        def start_with_id(status, headers, exc_info=None):
            headers = [h for h in headers if h[0].lower() != HTTP_HEADER.lower()]
            headers.append((HTTP_HEADER, request_id))
            return start_response(status, headers, exc_info)

        request = Request(environ, shallow=True)
        limit = int(self.server.container.config.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY))
        if request.content_length is not None and request.content_length > limit:
            response = error_response(413, "payload_too_large",
                                      "The body is larger than {} bytes.".format(limit))
            return response(environ, start_with_id)
        try:
            provider, values = self.url_map.bind_to_environ(environ).match()
            request.path_values = values
            response = provider.handle_request(request)
        except HTTPException as exc:
            response = error_response(exc.code, _http_error_code(exc), exc.description)
            if exc.code == 405:
                response.headers["Allow"] = ", ".join(exc.valid_methods or [])
        return response(environ, start_with_id)


class JsonWebServer(WebServer):
    def get_wsgi_app(self):
        return JsonWsgiApp(self)

    def context_data_from_headers(self, request):
        return {CONTEXT_KEY: request.environ.get(ENVIRON_KEY) or new_correlation_id()}


class JsonHttpHandler(HttpRequestHandler):
    """``@http`` whose handlers return ``body`` or ``(status, body)``."""

    server = JsonWebServer()

    def __init__(self, method, url, expected_exceptions=ServiceError, **kwargs):
        super().__init__(method, url, expected_exceptions=expected_exceptions, **kwargs)

    def response_from_result(self, result):
        if isinstance(result, Response):
            return result
        status, body = result if isinstance(result, tuple) else (200, result)
        return json_response(status, body)

    def response_from_exception(self, exc):
        if isinstance(exc, ServiceError):
            if exc.status >= 500:
                log.warning("HTTP %s: %s", exc.status, exc)
            return json_response(exc.status, exc.to_dict())
        if isinstance(exc, ValidationError):
            return json_response(400, validation_error(exc).to_dict())
        if isinstance(exc, HTTPException):
            return error_response(exc.code, _http_error_code(exc), exc.description)
        log.error("unhandled error in HTTP handler", exc_info=exc)
        return error_response(500, "internal_error", "Something went wrong on our side.")


http = JsonHttpHandler.decorator


def read_json(request, schema=None):
    """The request's JSON body, validated by ``schema`` if given."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        body = json.loads(request.get_data(as_text=True) or "null")
    except ValueError as exc:
        raise MalformedJson("The body is not valid JSON: {}".format(exc),
                            details={"_body": ["Not valid JSON."]}) from None
    if schema is None:
        return body
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.", details={"_body": ["Must be a JSON object."]})
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def read_query(request, schema):
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error(exc, "The query parameters are not valid.") from None


class MalformedJson(InvalidInput):
    code = "malformed_json"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"
