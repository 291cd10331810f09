"""The HTTP limits' pieces without a server: settings, reading a body before any
worker runs (chunked, oversize, cut short), and eventlet's log kept quiet.
The same behaviour against real processes: tests/e2e/test_http_traffic.py."""
import io
import json
import logging
from types import SimpleNamespace

import pytest
from eventlet.wsgi import Input

from services.common.http.front_door import HttpLimits, JsonWsgiApp, QuietClientLog


def app(max_body=64):
    """The WSGI app's body reading, without a container behind it."""
    instance = JsonWsgiApp.__new__(JsonWsgiApp)
    instance.max_body = max_body
    instance.read_timeout = 2
    return instance


def environ(raw, content_length=None, coding=None):
    """What eventlet hands the app: its own Input over the socket's bytes."""
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x"}
    if content_length is not None:
        env["CONTENT_LENGTH"] = str(content_length)
    if coding is not None:
        env["HTTP_TRANSFER_ENCODING"] = coding
    env["wsgi.input"] = Input(io.BufferedReader(io.BytesIO(raw)), content_length, None,
                              chunked_input=(coding == "chunked"))
    return env


def status_and_body(response):
    return response.status_code, json.loads(response.get_data())


def chunks(data, size=5):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def test_limits_from_config_with_defaults_and_refusals():
    assert HttpLimits.from_config({}) == HttpLimits(10.0, 256, 20, 1.0)
    limits = HttpLimits.from_config({"HTTP_READ_TIMEOUT": "2.5", "HTTP_MAX_CONNECTIONS": 5,
                                     "HTTP_MAX_CONCURRENCY": 3, "HTTP_QUEUE_TIMEOUT": 0})
    assert limits == HttpLimits(2.5, 5, 3, 0.0)
    assert limits.worker_slots == 3 + HttpLimits.OPS_CONCURRENCY
    for key in ("HTTP_READ_TIMEOUT", "HTTP_MAX_CONNECTIONS", "HTTP_MAX_CONCURRENCY"):
        with pytest.raises(ValueError, match=key):
            HttpLimits.from_config({key: 0})


def test_a_chunked_body_is_read_whole_and_handed_on_with_a_length():
    body = b'{"reason": "changed my mind"}'
    env = environ(chunks(body), coding="chunked")
    assert app().take_body(env) is None
    assert env["CONTENT_LENGTH"] == str(len(body))
    assert "HTTP_TRANSFER_ENCODING" not in env
    assert env["wsgi.input"].read() == body


def test_a_chunked_body_over_the_limit_is_413():
    status, body = status_and_body(app(max_body=10).take_body(environ(chunks(b"x" * 50), coding="chunked")))
    assert status == 413 and body["error"] == "payload_too_large"


def test_a_broken_chunk_is_400():
    status, body = status_and_body(app().take_body(environ(b"zz\r\nabc\r\n", coding="chunked")))
    assert status == 400 and body["error"] == "malformed_body"


def test_other_transfer_codings_are_refused():
    status, body = status_and_body(app().take_body(environ(b"abc", coding="gzip")))
    assert status == 501 and "Transfer-Encoding" in body["details"]


def test_content_length_bodies():
    env = environ(b'{"a": 1}', content_length=8)
    assert app().take_body(env) is None and env["wsgi.input"].read() == b'{"a": 1}'
    status, body = status_and_body(app(max_body=4).take_body(environ(b'{"a": 1}', content_length=8)))
    assert status == 413
    # the client went away after 3 of 50 bytes
    status, body = status_and_body(app().take_body(environ(b'{"a', content_length=50)))
    assert status == 400 and body["error"] == "incomplete_body"


def test_eventlets_tracebacks_about_clients_go_to_debug_as_one_line(caplog):
    log = QuietClientLog(logging.getLogger("nameko.web.server"))
    with caplog.at_level(logging.DEBUG, "nameko.web.server"):
        log.info("Traceback (most recent call last):\n  File x\nBrokenPipeError: [Errno 32] Broken pipe\n")
        log.error("I/O error while discarding request body. client=%s", "1.2.3.4")
        log.info("127.0.0.1 - - \"GET /health HTTP/1.1\" 200")
    levels = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert levels == [("DEBUG", "HTTP client I/O: BrokenPipeError: [Errno 32] Broken pipe"),
                      ("DEBUG", "HTTP client I/O: I/O error while discarding request body. client=1.2.3.4"),
                      ("INFO", "127.0.0.1 - - \"GET /health HTTP/1.1\" 200")]


def test_the_worker_pool_grows_by_the_http_slots_only():
    from eventlet import GreenPool
    from services.common.http.front_door import JsonWebServer

    server = JsonWebServer()
    container = SimpleNamespace(config={"HTTP_MAX_CONCURRENCY": 7}, _worker_pool=GreenPool(10))
    server.container = container
    server.setup()
    assert container._worker_pool.size == 10 + 7 + HttpLimits.OPS_CONCURRENCY


def test_refusals_in_a_flood_are_one_warning_per_interval(caplog):
    from services.common.http.front_door import Throttled

    refused = Throttled("connection refused", interval=60)
    with caplog.at_level(logging.DEBUG, "services.common.http.front_door"):
        for n in range(5):
            refused("{} open".format(n))
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "0 open" in warnings[0].getMessage()
    assert len([record for record in caplog.records if record.levelno == logging.DEBUG]) == 4
