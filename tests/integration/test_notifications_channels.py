"""The SMTP channel against a real aiosmtpd server on loopback, in each of its
security modes, with and without login; no broker or database involved."""
import subprocess

import pytest

from services.notifications import domain
from services.notifications.channels import Outgoing, SmtpChannel
from tests.support import free_port
from tests.support.notifications_fakes import SmtpSink

MESSAGE = Outgoing(id=7, key="event-1:email", event_type="order_confirmed", order_id="o-1",
                   address="kim@example.com", subject="Your order o-1 is confirmed",
                   body="Hello Kim,\nTotal: 1.00\n", html="<p>Total: <b>1.00</b></p>")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, which the client is told to trust."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def sinks(tmp_path):
    started = []

    def start(**options):
        sink = SmtpSink(tmp_path, free_port(), **options).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def channel(port, **options):
    return SmtpChannel("127.0.0.1", port, mail_from="Shop <shop@example.com>", timeout=5, **options)


def test_plain_smtp_delivers_text_and_html(sinks):
    sink = sinks()
    channel(sink.port, security="none").send(MESSAGE)
    [mail] = sink.messages()
    assert mail.rcpt_tos == ["kim@example.com"] and mail.mail_from == "shop@example.com"
    assert str(mail.message["From"]) == "Shop <shop@example.com>"
    assert mail.subject == "Your order o-1 is confirmed"
    assert mail.text() == "Hello Kim,\nTotal: 1.00\n"
    assert mail.html().strip() == "<p>Total: <b>1.00</b></p>"
    assert str(mail.message["X-Notification-Key"]) == "event-1:email"
    assert mail.tls is False


def test_starttls_with_login(sinks, certificate):
    cert, key = certificate
    sink = sinks(mode="starttls", cert=cert, key=key, login=("shop", "s3cret"))
    channel(sink.port, security="starttls", username="shop", password="s3cret", ca_file=cert).send(MESSAGE)
    [mail] = sink.messages()
    assert mail.tls is True and mail.auth is True


def test_wrong_password_is_a_permanent_failure(sinks, certificate):
    cert, key = certificate
    sink = sinks(mode="starttls", cert=cert, key=key, login=("shop", "s3cret"))
    with pytest.raises(domain.PermanentFailure, match="SMTP 535"):
        channel(sink.port, security="starttls", username="shop", password="wrong", ca_file=cert).send(MESSAGE)
    assert sink.messages() == []


def test_implicit_tls(sinks, certificate):
    cert, key = certificate
    sink = sinks(mode="tls", cert=cert, key=key)
    channel(sink.port, security="tls", ca_file=cert).send(MESSAGE)
    [mail] = sink.messages()
    assert mail.tls is True


def test_an_untrusted_certificate_is_not_accepted(sinks, certificate):
    cert, key = certificate
    sink = sinks(mode="tls", cert=cert, key=key)
    with pytest.raises(domain.TransientFailure, match="CERTIFICATE_VERIFY_FAILED"):
        channel(sink.port, security="tls").send(MESSAGE)
    assert sink.messages() == []


def test_a_server_that_does_not_answer_in_time_is_a_transient_failure(sinks):
    sink = sinks(delay=3)
    with pytest.raises(domain.TransientFailure, match="timed out"):
        SmtpChannel("127.0.0.1", sink.port, security="none", mail_from="shop@example.com",
                    timeout=0.5).send(MESSAGE)


# internationalised addresses (issue 11, item 4) ------------------------------------


def test_an_internationalised_domain_goes_as_idna_to_a_relay_without_smtputf8(sinks):
    sink = sinks()  # offers no SMTPUTF8
    channel(sink.port, security="none").send(MESSAGE._replace(address="ann@bücher.example"))
    [mail] = sink.messages()
    assert mail.rcpt_tos == ["ann@xn--bcher-kva.example"]
    assert str(mail.message["To"]) == "ann@xn--bcher-kva.example"


def test_a_non_ascii_local_part_uses_smtputf8_when_offered(sinks):
    sink = sinks(smtputf8=True)
    channel(sink.port, security="none").send(MESSAGE._replace(address="jürgen@bücher.example"))
    [mail] = sink.messages()
    assert mail.rcpt_tos == ["jürgen@bücher.example"]


def test_a_non_ascii_local_part_without_smtputf8_is_a_permanent_failure(sinks):
    sink = sinks()
    with pytest.raises(domain.PermanentFailure, match="SMTPUTF8"):
        channel(sink.port, security="none").send(MESSAGE._replace(address="jürgen@example.com"))
    assert sink.messages() == []
