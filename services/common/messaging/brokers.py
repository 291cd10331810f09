"""``AMQP_URI`` as a failover list: several brokers separated by ``;``.

kombu's ``Connection`` takes ``amqp://u:p@rabbit-1//;amqp://u:p@rabbit-2//``
and, when a connection fails, tries the next broker in turn (round robin);
nameko 2.14.1 hands ``AMQP_URI`` to kombu unchanged everywhere, so consumers,
publishers, RPC proxies and the outbox all fail over. What does not
understand the list is the text around it: nameko's reconnection warning
redacts only the first password of the string.
"""
from nameko.utils import sanitize_url

SEPARATOR = ";"


def broker_urls(amqp_uri):
    """The brokers of ``amqp_uri``, in the order kombu tries them."""
    return [part.strip() for part in str(amqp_uri).split(SEPARATOR) if part.strip()]


def ssl_options(config):
    """``AMQP_SSL`` for a ``kombu.Connection``'s ``ssl``: None (plain AMQP, or ``amqps://`` with the
    system's CAs) or amqp's TLS options (``ca_certs``, ``certfile``, ``keyfile``, ``server_hostname``).

    A copy: kombu writes the node's host name into ``server_hostname`` when it is None.
    nameko's own consumers and publishers read ``AMQP_SSL`` themselves; the services'
    other connections (outbox, retries, health, dead letters) take it from here.
    """
    value = (config or {}).get("AMQP_SSL")
    return dict(value) if isinstance(value, dict) else (value or None)


def redacted(amqp_uri):
    """``amqp_uri`` fit for a log: every broker's password replaced, not only the first."""
    return SEPARATOR.join(sanitize_url(url) for url in broker_urls(amqp_uri))
