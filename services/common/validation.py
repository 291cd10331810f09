"""What every service accepts from a client, checked once at the edge.

A value a client controls (HTTP body, query, header, path; an RPC argument)
must be refused here, with the field named, if the database or a codec would
refuse it later: a NUL character (PostgreSQL text cannot hold it), an
unpaired surrogate (no UTF-8 encoder takes it), an integer past a 32-bit
column. Otherwise the refusal arrives as a driver error after part of the
work is done: a 500, an untyped RPC error with SQL text in it, or a
half-written request.

The limits live here so that HTTP (orders' schemas) and RPC (inventory's,
notifications') apply the same ones.
"""
import re

import idna
from marshmallow import ValidationError, fields, validate

from services.common.errors import NotFound

# Every integer column is 32-bit (PostgreSQL INTEGER).
MAX_INT32 = 2 ** 31 - 1
# Money is integer cents. The caps keep every total within a 32-bit column:
# MAX_PRICE x MAX_LINE_QUANTITY x MAX_ORDER_LINES is checked by orders' domain.
MAX_PRICE = 100_000_000
MAX_STOCK = 1_000_000_000  # on hand, at creation and after any restock
MAX_RESTOCK = 1_000_000
MAX_NAME = 200
MAX_REASON = 200
MAX_EMAIL = 254
MAX_ORDER_ID = 36

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SKU_MESSAGE = "Use 1-64 letters, digits, '.', '_' or '-'."
UNSTORABLE = "NUL characters and unpaired surrogates are not allowed."
CONTROL = "Control characters are not allowed."


class FullMatch(validate.Regexp):
    """``validate.Regexp`` matching the whole value.

    ``re.match`` with a pattern ending in ``$`` also accepts a trailing
    newline (``"NL-1\\n"``). The pattern keeps its ``^...$`` form because the
    OpenAPI document publishes it, and ECMA regexes (JSON Schema) know no ``\\Z``.
    """

    def __call__(self, value):
        if not isinstance(value, str) or self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def full_match(pattern, value):
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


SKU = FullMatch(SKU_PATTERN, error=SKU_MESSAGE)


def is_sku(value):
    return full_match(SKU_PATTERN, value)


def known_sku(sku):
    """``sku`` if it can be one; NotFound otherwise, so no database or service sees a string that cannot be."""
    if not is_sku(sku):
        raise NotFound("No product with sku {}.".format(str(sku)[:80]), details={"sku": ["Not a valid sku."]})
    return sku


def storable(value):
    """True if every database and UTF-8 codec here can hold ``value``."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate
        return False
    return True


def check_storable(value):
    if not storable(value):
        raise ValidationError(UNSTORABLE)


def check_no_control_characters(value):
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
        raise ValidationError(CONTROL)


class SafeString(fields.String):
    """A string every database and codec here accepts (see ``storable``)."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        check_storable(text)
        return text


def Text(max_length, **kwargs):
    """Free text a person typed: 1..max_length characters, one line, storable."""
    return SafeString(validate=[validate.Length(1, max_length), check_no_control_characters], **kwargs)


class StrictBoolean(fields.Boolean):
    """Only JSON ``true``/``false``: ``1`` or ``"yes"`` are refused, as the schema says."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


# emails ---------------------------------------------------------------------

EMAIL_MESSAGE = "Not a valid email address."
ASCII_LOCAL_PART = ("Use an address whose part before the @ is ASCII: "
                    "mail to other addresses cannot be delivered by every mail server.")
_structure = validate.Email(error=EMAIL_MESSAGE)


def normalise_email(value):
    """The one form an address is stored, compared and sent in, or ValidationError.

    Case is ignored (``Bob.Case@Example.COM`` is ``bob.case@example.com``:
    orders filters by it and notifications keys preferences by it). The
    domain may be internationalised (``bücher.example``): it must convert to
    IDNA, which is how it travels over SMTP (``smtp_address``). The part
    before the @ must be ASCII, because a relay without SMTPUTF8 cannot
    take anything else and would fail the message for good after the order
    was accepted.
    """
    if not isinstance(value, str):
        raise ValidationError("Not a valid string.")
    check_storable(value)
    check_no_control_characters(value)
    if len(value) > MAX_EMAIL or "@" not in value:
        raise ValidationError(EMAIL_MESSAGE)
    local, domain = value.rsplit("@", 1)
    if not local.isascii():
        raise ValidationError(ASCII_LOCAL_PART)
    if domain.isascii() and "xn--" not in domain.lower():
        # the common case, without the IDNA codec (50 us an address); the
        # structure check below still applies (an address literal, e.g. [192.0.2.1], too)
        ascii_domain = unicode_domain = domain.lower()
    else:
        try:
            ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
            unicode_domain = idna.decode(ascii_domain)
        except (idna.IDNAError, UnicodeError):
            raise ValidationError(EMAIL_MESSAGE) from None
    _structure("{}@{}".format(local, ascii_domain))
    if len(local) + 1 + len(ascii_domain) > MAX_EMAIL:
        raise ValidationError(EMAIL_MESSAGE)
    return "{}@{}".format(local.lower(), unicode_domain)


def smtp_address(address):
    """``address`` as an SMTP envelope without SMTPUTF8 takes it: the domain in IDNA (ASCII)."""
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    return "{}@{}".format(local, idna.encode(domain, uts46=True).decode("ascii"))


class Email(fields.String):
    """An email address in its normal form (``normalise_email``)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {}).setdefault("format", "email")
        kwargs.setdefault("validate", validate.Length(max=MAX_EMAIL))  # checked again; published as maxLength
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return normalise_email(super()._deserialize(value, attr, data, **kwargs))


class Lowercase(SafeString):
    """A storable string compared case-insensitively (an address used as a filter)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).lower()


# identifiers ----------------------------------------------------------------

def order_id_or_none(value):
    """``value`` as an order id (a UUID's canonical text), or None if it cannot be one."""
    import uuid

    if not isinstance(value, str) or len(value) > MAX_ORDER_ID:
        return None
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return None
    return canonical if canonical == value.lower() else None
