"""A dead letter replayed to a queue that no longer exists is not lost: it is
published mandatory, comes back, and stays in the dead-letter queue until
its queue exists again. Real broker, no services needed."""
import eventlet
from kombu import Connection, Producer, Queue

from services.common.messaging.consumers import redelivery_exchange
from services.common.messaging.deadletters import list_dead_letters, replay_dead_letters


def park(amqp_uri, original_queue):
    # confirmed, so the letter is in the queue before the test goes on
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as connection:
        queue = Queue("inventory.dead-letters", durable=True)
        queue(connection.channel()).declare()
        connection.Producer().publish({"id": "e-1", "type": "order_created"}, exchange="",
                                      routing_key="inventory.dead-letters", serializer="json",
                                      headers={"x-original-queue": original_queue, "x-error-type": "RuntimeError"})


def test_a_dead_letter_whose_queue_was_deleted_stays_parked_until_the_queue_is_back(rabbit_config):
    amqp_uri = rabbit_config["AMQP_URI"]
    park(amqp_uri, "evt-gone--inventory.reserve_stock")

    assert replay_dead_letters(amqp_uri, "inventory") == 0
    letters = list_dead_letters(amqp_uri, "inventory")
    assert [letter["body"]["id"] for letter in letters] == ["e-1"], "the dead letter was lost"

    # declared as inventory's consumer declares it: bound to inventory's redelivery exchange by its name
    target = Queue("evt-gone--inventory.reserve_stock", durable=True, exchange=redelivery_exchange("inventory"),
                   routing_key="evt-gone--inventory.reserve_stock")
    with Connection(amqp_uri) as connection:
        bound = target(connection.channel())
        bound.declare()
        assert replay_dead_letters(amqp_uri, "inventory") == 1
        assert list_dead_letters(amqp_uri, "inventory") == []
        message = bound.get(no_ack=True, accept=["json"])
        assert message is not None and message.payload["id"] == "e-1"


def test_letters_dead_lettered_again_during_a_replay_wait_for_the_next_one(rabbit_config, monkeypatch):
    """A replay takes the letters waiting when it starts; each one that fails again comes back behind them."""
    amqp_uri = rabbit_config["AMQP_URI"]
    target = Queue("evt-back--inventory.reserve_stock", durable=True, exchange=redelivery_exchange("inventory"),
                   routing_key="evt-back--inventory.reserve_stock")
    with Connection(amqp_uri) as connection:
        target(connection.channel()).declare()
    for _ in range(3):
        park(amqp_uri, "evt-back--inventory.reserve_stock")
    # every replayed letter fails again at once: a new letter lands in the dead-letter queue
    publish, parking = Producer.publish, []

    def publish_and_fail_again(producer, *args, **kwargs):
        result = publish(producer, *args, **kwargs)
        if kwargs.get("exchange") == redelivery_exchange("inventory") and not parking:
            parking.append(1)
            park(amqp_uri, "evt-back--inventory.reserve_stock")
            parking.pop()
        return result
    monkeypatch.setattr(Producer, "publish", publish_and_fail_again)

    with eventlet.Timeout(20):  # before the fix it went on replaying the letters it had just sent back
        assert replay_dead_letters(amqp_uri, "inventory") == 3
    monkeypatch.undo()
    assert len(list_dead_letters(amqp_uri, "inventory")) == 3
