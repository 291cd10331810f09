"""Customer data kept out of logs and traces.

Logs are read by more people, kept longer and copied to more places than the
databases, so an email address never reaches them whole: ``ann@example.com``
becomes ``a***@example.com`` (enough to tell two customers apart while
debugging, not enough to write to them). The masking is applied to the final
text of every record, whatever put the address there.
"""
import logging
import re

EMAIL = re.compile(r"([A-Za-z0-9._%+'-])[A-Za-z0-9._%+'-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def mask_text(text):
    """``text`` with every email address in it masked."""
    if "@" not in text:
        return text
    return EMAIL.sub(r"\1***@\2", text)


def mask(value):
    """A copy of ``value`` (JSON-like data) with emails masked everywhere, keys included."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask(key): mask(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(item) for item in value]
    return value


class MaskEmails(logging.Filter):
    """Masks emails in a plain log record's message and traceback.

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
