"""QUEUE_TYPE picks the arguments of every durable consumed queue (services/common/messaging/queues.py)."""
import pytest

from services.common.messaging.consumers import redelivery_exchange, retry_queue
from services.common.messaging.queues import InvalidQueueType, queue_arguments


def test_classic_adds_no_queue_type_so_queues_declared_before_the_setting_still_match():
    assert queue_arguments({}) == {}
    assert queue_arguments({"QUEUE_TYPE": "classic"}, {"x-dead-letter-exchange": ""}) == {
        "x-dead-letter-exchange": ""}


def test_quorum_queues_dead_letter_at_least_once():
    config = {"QUEUE_TYPE": " Quorum "}
    assert queue_arguments(config) == {"x-queue-type": "quorum"}
    assert retry_queue(config, "evt-a-b--c.d", 2.0, redelivery_exchange("c")).queue_arguments == {
        "x-queue-type": "quorum",
        "x-message-ttl": 2000,
        "x-dead-letter-exchange": "c.redelivery",
        "x-dead-letter-routing-key": "evt-a-b--c.d",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_an_unknown_queue_type_is_refused_by_name():
    with pytest.raises(InvalidQueueType, match="QUEUE_TYPE must be one of classic, quorum, not 'stream'"):
        queue_arguments({"QUEUE_TYPE": "stream"})
