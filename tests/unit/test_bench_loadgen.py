"""The benchmark's load generator counts what it should: answers, their
latency, order ids, and failures (error statuses, requests left unanswered)."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.support import eventually, free_port

ROOT = __file__.rsplit("/tests/", 1)[0]

SERVER = textwrap.dedent('''
    import json, sys, time, uuid
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/slow":
                time.sleep(30)
            status = 503 if self.path == "/fail" else 202
            body = json.dumps({"id": str(uuid.uuid4()), "status": "pending"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''')


@pytest.fixture
def server():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    eventually(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True, timeout=5,
               message="the stand-in server to listen")
    yield "http://127.0.0.1:{}".format(port)
    process.kill()
    process.wait()


def load(url, tmp_path, *args):
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"customer_email": "a@example.com", "lines": []}\n')
    output = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--url", url, "--body-file", str(bodies), "--collect-ids", *args],
        cwd=ROOT, stdout=subprocess.PIPE, check=True, timeout=60).stdout
    return json.loads(output)


def test_open_loop_sends_the_offered_rate_and_collects_every_order_id(server, tmp_path):
    result = load(server + "/orders", tmp_path, "--mode", "open", "--rate", "40", "--duration", "1")
    assert result["ok"] == 40
    assert len(set(result["ids"])) == 40
    assert result["error_count"] == 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["cpu_s"] > 0 and result["peak_rss_mb"] > 0


def test_closed_loop_counts_error_statuses_as_errors(server, tmp_path):
    result = load(server + "/fail", tmp_path, "--mode", "closed", "--concurrency", "2", "--duration", "0.5")
    assert result["ok"] == 0
    assert result["error_count"] == result["errors"]["http_503"] > 0
    assert result["ids"] == []


def test_requests_left_unanswered_count_as_unfinished(server, tmp_path):
    result = load(server + "/slow", tmp_path, "--mode", "open", "--rate", "4", "--duration", "0.5",
                  "--timeout", "1")
    assert result["ok"] == 0
    assert result["error_count"] == 2
    assert set(result["errors"]) <= {"timeout", "unfinished"}
