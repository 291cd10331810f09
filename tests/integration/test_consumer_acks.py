"""Acks follow the handling, and the acks of messages handled together leave together."""
from kombu import Connection, Exchange, Producer

from services.common.messaging.consumers import SafeAckQueueConsumer, event_handler
from services.common.messaging.events import new_event
from tests.support import eventually

BURST = 40
handled = []


class Tally:
    name = "tally"

    @event_handler("wire", "tick")
    def count(self, body):
        handled.append(body["data"]["n"])


def test_a_burst_is_acked_in_shared_writes_and_nothing_is_left_unacked(container_factory, rabbit_config,
                                                                       monkeypatch):
    flushed = []  # how many acks each flush carried
    flush = SafeAckQueueConsumer._flush_acks

    def counting_flush(consumer):
        flushed.append(len(consumer._acks))
        flush(consumer)
    monkeypatch.setattr(SafeAckQueueConsumer, "_flush_acks", counting_flush)
    handled.clear()
    container = container_factory(Tally, dict(rabbit_config, MAX_DELIVERY_ATTEMPTS=2))
    container.start()

    exchange = Exchange("wire.events", type="topic", durable=True)
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        producer = Producer(connection.channel(), exchange=exchange, serializer="json")
        for n in range(BURST):
            producer.publish(new_event("wire", "tick", {"n": n}), routing_key="tick")
    eventually(lambda: len(handled) == BURST, message="every tick handled")
    container.stop()

    assert sorted(handled) == list(range(BURST)), "each message handled once"
    assert sum(flushed) == BURST, flushed
    assert max(flushed) > 1, "acks ready together should share a flush: {}".format(flushed)
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        # a message the stopped consumer had not acked would be back in the queue
        left = connection.channel().queue_declare("evt-wire-tick--tally.count", passive=True).message_count
    assert left == 0
