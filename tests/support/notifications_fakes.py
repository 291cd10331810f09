"""Real servers on loopback standing in for the notification providers.

``SmtpSink`` runs aiosmtpd in a child process (``python -m
tests.support.notifications_fakes smtp ...``) so that it can be started, stopped and
slowed down like a real mail server, and so that its asyncio loop never meets
the test process's eventlet. Each accepted message is appended to a JSON-lines
file that the test reads. ``WebhookSink`` is a plain HTTP server in the test
process that records every request and answers with the statuses it is told.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from email import message_from_string
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.waiting import GiveUp, eventually

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Delays short enough for a test: a few quick retries, a sender that looks often.
FAST_DELIVERY = {
    "NOTIFY_MAX_ATTEMPTS": 3,
    "NOTIFY_BACKOFF_BASE": 0.05,
    "NOTIFY_BACKOFF_MAX": 0.2,
    "NOTIFY_POLL_INTERVAL": 0.5,
    "NOTIFY_LEASE": 30,
    "SMTP_TIMEOUT": 10,
    "WEBHOOK_TIMEOUT": 2,
}


def smtp_settings(port):
    return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": port, "SMTP_SECURITY": "none",
            "MAIL_FROM": "Test Shop <shop@example.com>"}


def order_data(email, status="confirmed", order_id=None, reasons=None):
    """An order as the orders service puts it in its events."""
    import uuid
    return {
        "id": order_id or str(uuid.uuid4()), "status": status, "customer_email": email, "total": 2750,
        "lines": [{"sku": "MUG-1", "name": "Mug", "quantity": 2, "unit_price": 1000, "line_total": 2000},
                  {"sku": "TEA-2", "name": "Green tea", "quantity": 1, "unit_price": 750, "line_total": 750}],
        "reasons": reasons, "correlation_id": None,
    }


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class ReceivedMail:
    def __init__(self, record):
        self.mail_from = record["mail_from"]
        self.rcpt_tos = record["rcpt_tos"]
        self.auth = record.get("auth")
        self.tls = record.get("tls")
        self.message = message_from_string(record["data"].replace("\r\n", "\n"), policy=policy.default)

    @property
    def subject(self):
        return str(self.message["Subject"])

    def text(self):
        return self.message.get_body(preferencelist=("plain",)).get_content()

    def html(self):
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else None


class SmtpSink:
    """An SMTP server in a child process on a fixed loopback port."""

    def __init__(self, directory, port, delay=0.0, refuse=None, mode="none", cert=None, key=None,
                 login=None, smtputf8=False):
        self.port = port
        self.smtputf8 = smtputf8
        self.delay = delay
        self.refuse = refuse
        self.mode = mode
        self.cert, self.key, self.login = cert, key, login
        self.out = os.path.join(str(directory), "smtp-{}.jsonl".format(port))
        self.log = os.path.join(str(directory), "smtp-{}.log".format(port))
        self.process = None

    def start(self, delay=None):
        if delay is not None:
            self.delay = delay
        command = [sys.executable, "-m", "tests.support.notifications_fakes", "smtp", "--port", str(self.port),
                   "--out", self.out, "--delay", str(self.delay), "--mode", self.mode]
        if self.refuse:
            command += ["--refuse", self.refuse]
        if self.cert:
            command += ["--cert", self.cert, "--key", self.key]
        if self.login:
            command += ["--login", ":".join(self.login)]
        if self.smtputf8:
            command += ["--smtputf8"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONPATH=ROOT))

        def listening():
            if self.process.poll() is not None:
                raise GiveUp("SMTP sink exited:\n" + self._log())
            return _port_open(self.port)

        eventually(listening, timeout=15, interval=0.05, message=lambda: "SMTP sink to start:\n" + self._log())
        return self

    def _log(self):
        with open(self.log) as log:
            return log.read()

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def messages(self):
        if not os.path.exists(self.out):
            return []
        with open(self.out) as stream:
            return [ReceivedMail(json.loads(line)) for line in stream if line.strip()]

    def to(self, address):
        return [mail for mail in self.messages() if address in mail.rcpt_tos]


class WebhookSink:
    """An HTTP server on loopback that records JSON POSTs.

    ``statuses`` is a list of status codes to answer with, one per request in
    order (then 200); ``delay`` seconds are waited before each answer.
    """

    def __init__(self):
        self.requests = []
        self.statuses = []
        self.delay = 0.0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                sink.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                if sink.delay:
                    time.sleep(sink.delay)
                status = sink.statuses.pop(0) if sink.statuses else 200
                answer = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def url(self, path):
        return "http://127.0.0.1:{}{}".format(self.port, path)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def posts(self, path):
        return [request for request in self.requests if request["path"] == path]


# the child process ----------------------------------------------------------------

def _serve_smtp(args):
    import asyncio
    import re
    import signal
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if args.refuse and re.search(args.refuse, address):
                return "550 5.1.1 <{}>: mailbox unavailable".format(address)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            if args.delay:
                await asyncio.sleep(args.delay)
            record = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                      "data": envelope.content.decode("utf-8", "replace"),
                      "auth": session.authenticated,
                      "tls": server.transport.get_extra_info("ssl_object") is not None}
            with open(args.out, "a") as out:
                out.write(json.dumps(record) + "\n")
            return "250 2.0.0 Message accepted"

    def authenticator(server, session, envelope, mechanism, auth_data):
        expected = args.login.split(":", 1) if args.login else None
        ok = (isinstance(auth_data, LoginPassword) and expected is not None
              and auth_data.login.decode() == expected[0] and auth_data.password.decode() == expected[1])
        return AuthResult(success=ok, handled=False)

    kwargs = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.mode == "tls":
            kwargs["ssl_context"] = context
        else:
            kwargs.update(tls_context=context, require_starttls=True)
    if args.login:
        kwargs.update(authenticator=authenticator, auth_required=True)
    kwargs["enable_SMTPUTF8"] = args.smtputf8  # offered only when asked: a relay without it is the default
    controller = Controller(Handler(), hostname="127.0.0.1", port=args.port, ready_timeout=10, **kwargs)
    if args.mode == "tls":
        # the controller's own readiness probe speaks plain SMTP; skip it
        controller._trigger_server = lambda: None
    controller.start()
    print("smtp sink listening on 127.0.0.1:{}".format(args.port), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    controller.stop()


def main(argv=None):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    smtp = sub.add_parser("smtp")
    smtp.add_argument("--port", type=int, required=True)
    smtp.add_argument("--out", required=True)
    smtp.add_argument("--delay", type=float, default=0.0)
    smtp.add_argument("--refuse", default=None, help="regex of recipient addresses to refuse with 550")
    smtp.add_argument("--mode", choices=["none", "starttls", "tls"], default="none")
    smtp.add_argument("--cert")
    smtp.add_argument("--key")
    smtp.add_argument("--login", help="user:password required by AUTH")
    smtp.add_argument("--smtputf8", action="store_true", help="offer SMTPUTF8")
    args = parser.parse_args(argv)
    _serve_smtp(args)


if __name__ == "__main__":
    main()
