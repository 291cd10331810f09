"""The ways a notification leaves the building.

Each channel has ``send(outgoing)``: it returns when the provider accepted
the message and raises ``domain.TransientFailure`` or
``domain.PermanentFailure`` when it did not, so that the sender can decide
between trying again and giving up. Channels do network I/O only; they never
touch the database.
"""
import logging
import smtplib
import ssl
from collections import namedtuple
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import requests

from services.common.validation import smtp_address

from . import domain

log = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}

Outgoing = namedtuple("Outgoing", "id key event_type order_id address subject body html")


class ConfigurationError(ValueError):
    """A delivery setting that can never work; the service refuses to start."""


def _setting(config, key, default=None):
    """A config value, with empty strings (unset variables) as missing."""
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return value.strip() if isinstance(value, str) else value


class LogChannel:
    """Writes the message to the service log: the stand-in when no SMTP server is set."""

    name = domain.LOG

    def send(self, outgoing):
        log.info("notification %s to %s via log: %s\n%s", outgoing.id, domain.mask(outgoing.address),
                 outgoing.subject, outgoing.body)


class SmtpChannel:
    name = domain.EMAIL

    def __init__(self, host, port=None, security="starttls", username=None, password=None,
                 mail_from="no-reply@localhost", timeout=10.0, ca_file=None):
        if security not in SECURITY_MODES:
            raise ConfigurationError("SMTP_SECURITY must be one of {}, not {!r}".format(
                ", ".join(SECURITY_MODES), security))
        self.host = host
        try:
            self.port = int(port) if port else DEFAULT_PORTS[security]
        except (TypeError, ValueError):
            raise ConfigurationError("SMTP_PORT must be a number, not {!r}".format(port)) from None
        self.security = security
        self.username = username
        self.password = password or ""
        self.mail_from = mail_from
        self.envelope_from = parseaddr(mail_from)[1]
        if "@" not in self.envelope_from:
            raise ConfigurationError("MAIL_FROM must hold an email address, not {!r}".format(mail_from))
        self.timeout = float(timeout)
        self.ca_file = ca_file

    def _tls_context(self):
        return ssl.create_default_context(cafile=self.ca_file)

    def compose(self, outgoing, to=None):
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = to or outgoing.address
        message["Subject"] = outgoing.subject
        message["Date"] = formatdate(localtime=False)
        # a domain is given so that make_msgid does not look up the host name
        message["Message-ID"] = make_msgid(domain=self.envelope_from.rpartition("@")[2])
        message["X-Notification-Key"] = outgoing.key
        message.set_content(outgoing.body)
        if outgoing.html:
            message.add_alternative(outgoing.html, subtype="html")
        return message

    def send(self, outgoing):
        """Deliver over SMTP: the domain in IDNA, SMTPUTF8 only when needed and offered.

        Orders accepts an internationalised domain (``ann@bücher.example``),
        which goes as ``ann@xn--bcher-kva.example`` to any relay. A part
        before the @ that is not ASCII (refused at placement since, possible
        in older orders) needs SMTPUTF8; a relay without it can never take
        the message, so that is a permanent failure with a clear reason.
        """
        local_ascii = outgoing.address.rpartition("@")[0].isascii()
        try:
            if self.security == "tls":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                          context=self._tls_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                client.ehlo()
                if self.security == "starttls":
                    client.starttls(context=self._tls_context())
                    client.ehlo()
                if self.username:
                    client.login(self.username, self.password)
                if local_ascii:
                    recipient = smtp_address(outgoing.address)
                elif client.has_extn("smtputf8"):
                    recipient = outgoing.address  # send_message asks for SMTPUTF8 itself
                else:
                    raise domain.PermanentFailure(
                        "the address's part before the @ is not ASCII and the SMTP server "
                        "does not offer SMTPUTF8")
                message = self.compose(outgoing, to=recipient)
                client.send_message(message, from_addr=self.envelope_from, to_addrs=[recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise domain.smtp_failure(code, _text(text)) from None
        except smtplib.SMTPResponseException as exc:
            raise domain.smtp_failure(exc.smtp_code, _text(exc.smtp_error)) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise domain.PermanentFailure("SMTP server does not support it: {}".format(exc)) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise domain.TransientFailure("SMTP {}:{}: {}: {}".format(
                self.host, self.port, type(exc).__name__, exc)) from None


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_auth_header(value):
    """``"Name: value"`` as a header; a bare value is an Authorization header."""
    if not value:
        return {}
    name, colon, rest = value.partition(":")
    if colon and name.strip() and " " not in name.strip():
        return {name.strip(): rest.strip()}
    return {"Authorization": value.strip()}


class WebhookChannel:
    """POSTs the message as JSON to a provider (SMS gateway, push service).

    The ``Idempotency-Key`` header is the same for every attempt of one
    notification, so a provider that honours it sends a retried message once.
    Redirects are not followed: a POST that is redirected is a wrong URL.
    """

    def __init__(self, name, url, auth_header=None, timeout=5.0):
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError("{} webhook URL must start with http:// or https://, not {!r}".format(
                name, url))
        self.name = name
        self.url = url
        self.headers = parse_auth_header(auth_header)
        self.timeout = float(timeout)
        self.session = requests.Session()

    def payload(self, outgoing):
        common = {"notification_id": outgoing.id, "event_type": outgoing.event_type,
                  "order_id": outgoing.order_id}
        if self.name == domain.SMS:
            return dict(common, to=outgoing.address, text=outgoing.body)
        return dict(common, device_token=outgoing.address, title=outgoing.subject, body=outgoing.body,
                    data={"order_id": outgoing.order_id, "event_type": outgoing.event_type})

    def send(self, outgoing):
        headers = dict(self.headers, **{"Idempotency-Key": outgoing.key})
        try:
            response = self.session.post(self.url, json=self.payload(outgoing), headers=headers,
                                         timeout=self.timeout, allow_redirects=False)
        except requests.Timeout:
            raise domain.TransientFailure("{} provider did not answer within {}s".format(
                self.name, self.timeout)) from None
        except requests.RequestException as exc:
            raise domain.TransientFailure("{} provider unreachable: {}: {}".format(
                self.name, type(exc).__name__, exc)) from None
        if not 200 <= response.status_code < 300:
            raise domain.http_failure(response.status_code, response.text)


def build_channels(config):
    """The channels this deployment can use, from config; log is always there."""
    channels = {domain.LOG: LogChannel()}
    host = _setting(config, "SMTP_HOST")
    if host:
        channels[domain.EMAIL] = SmtpChannel(
            host,
            port=_setting(config, "SMTP_PORT"),
            security=str(_setting(config, "SMTP_SECURITY", "starttls")).lower(),
            username=_setting(config, "SMTP_USERNAME"),
            password=_setting(config, "SMTP_PASSWORD"),
            mail_from=_setting(config, "MAIL_FROM", "no-reply@localhost"),
            timeout=_setting(config, "SMTP_TIMEOUT", 10),
            ca_file=_setting(config, "SMTP_CA_FILE"),
        )
    auth = _setting(config, "WEBHOOK_AUTH_HEADER")
    timeout = _setting(config, "WEBHOOK_TIMEOUT", 5)
    for channel, key in ((domain.SMS, "SMS_WEBHOOK_URL"), (domain.PUSH, "PUSH_WEBHOOK_URL")):
        url = _setting(config, key)
        if url:
            channels[channel] = WebhookChannel(channel, url, auth, timeout)
    return channels
