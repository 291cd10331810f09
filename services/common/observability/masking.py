"""Customer data kept out of logs and traces.

Logs are read by more people, kept longer and copied to more places than the
databases, so contact details never reach them whole:

- an email address ``ann@example.com`` becomes ``a***@example.com`` (enough
  to tell two customers apart while debugging, not enough to write to them),
  also when percent-encoded in a query string (``ann%40example.com``);
- a phone number in E.164 form ``+447700900123`` (or ``%2B447700900123``)
  becomes ``+***23``;
- a push (device) token becomes ``***`` and its last four characters: found
  by name (``device_token``, ``push_token``, ``phone`` in JSON, keyword
  arguments or query strings) and by shape (APNs' 64 hex digits, FCM's
  ``...:APA91...`` registration tokens).

The masking is applied to the final text of every record, whatever put the
data there.
"""
import logging
import re

# A match starts only where a run of address characters starts: the same
# matches as without the look-behind, found in one pass over each run instead
# of one per character (long ids and dotted names made it quadratic)
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+'-])([A-Za-z0-9._%+'-])[A-Za-z0-9._%+'-]*?(@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
PHONE = re.compile(r"(?<![\w%+])(\+|%2[Bb])[1-9]\d{4,12}(\d{2})(?!\d)")
SENSITIVE_KEYS = ("device_token", "push_token", "devicetoken", "pushtoken", "phone")
NAMED_SECRET = re.compile(
    r"((?:device_token|push_token|deviceToken|pushToken|phone)[\"']?\s*[:=]\s*[\"']?)([^\"'&\s,}\]]+)")
APNS_TOKEN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
FCM_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,}:APA91[A-Za-z0-9_-]{20,}")


def mask_secret(value):
    """``***`` and the last four characters (nothing of a short value)."""
    value = str(value)
    return "***" + value[-4:] if len(value) >= 12 else "***"


def _named(match):
    value = match.group(2)
    if value.startswith("***") or value in ("null", "None"):
        return match.group(0)
    if match.group(1).lower().startswith("phone"):
        return match.group(1) + PHONE.sub(r"\1***\2", value)
    return match.group(1) + mask_secret(value)


def mask_text(text):
    """``text`` with every email address, phone number and push token in it masked."""
    if "@" in text or "%40" in text:
        text = EMAIL.sub(r"\1***\2\3", text)
    if "+" in text or "%2" in text:
        text = PHONE.sub(r"\1***\2", text)
    if "oken" in text or "hone" in text:
        text = NAMED_SECRET.sub(_named, text)
    if len(text) >= 64:
        text = APNS_TOKEN.sub(lambda found: mask_secret(found.group(0)), text)
        if ":APA91" in text:
            text = FCM_TOKEN.sub(lambda found: mask_secret(found.group(0)), text)
    return text


def mask(value, key=None):
    """A copy of ``value`` (JSON-like data) with contact details masked everywhere, keys included."""
    if isinstance(value, str):
        if key is not None and key.lower().replace("-", "_") in SENSITIVE_KEYS:
            return PHONE.sub(r"\1***\2", value) if key.lower() == "phone" else mask_secret(value)
        return mask_text(value)
    if isinstance(value, dict):
        return {mask(name): mask(item, name if isinstance(name, str) else None) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(item) for item in value]
    return value


class MaskEmails(logging.Filter):
    """Masks emails, phone numbers and push tokens in a plain log record's message and traceback.

    The message is formatted here once, masked, and stored back without its
    arguments, so no formatter later can print the raw values.
    """

    _exception_formatter = logging.Formatter()

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for logging to report
            return True
        record.msg, record.args = mask_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True
