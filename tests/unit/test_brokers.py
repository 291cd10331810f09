"""AMQP_URI as a failover list (services/common/messaging/brokers.py)."""
from kombu import Connection

from services.common.messaging.brokers import broker_urls, redacted

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


def test_config_yaml_passes_a_failover_list_and_the_queue_type_through(monkeypatch):
    import os

    from services.common.messaging.queues import queue_type
    from services.common.settings import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "..", "config.yaml")
    monkeypatch.delenv("QUEUE_TYPE", raising=False)
    assert queue_type(load_config(path)) == "classic"
    uris = "amqp://app:pw@rabbit-1:5672/prod;amqp://app:pw@rabbit-2:5672/prod"
    monkeypatch.setenv("AMQP_URI", uris)
    monkeypatch.setenv("QUEUE_TYPE", "quorum")
    config = load_config(path)
    assert config["AMQP_URI"] == uris
    assert queue_type(config) == "quorum"
