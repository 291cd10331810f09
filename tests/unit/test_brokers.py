"""AMQP_URI as a failover list (services/common/brokers.py)."""
from kombu import Connection

from services.common.brokers import broker_urls, redacted

URIS = "amqp://app:s3cret-1@rabbit-1:5672/prod;amqp://app:s3cret-2@rabbit-2:5672/prod;amqp://rabbit-3/prod"


def test_every_password_of_a_failover_list_is_redacted():
    text = redacted(URIS)
    assert "s3cret" not in text
    assert text == ("amqp://app:********@rabbit-1:5672/prod;amqp://app:********@rabbit-2:5672/prod;"
                    "amqp://rabbit-3/prod")


def test_kombu_reads_the_same_brokers_in_the_same_order():
    connection = Connection(URIS)
    assert connection.alt == broker_urls(URIS)
    assert (connection.hostname, connection.userid, connection.password) == ("rabbit-1", "app", "s3cret-1")
    connection.maybe_switch_next()
    assert (connection.hostname, connection.password) == ("rabbit-2", "s3cret-2")
