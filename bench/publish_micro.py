"""Events per second one outbox can publish: one confirm per event (nameko's
Publisher, as the outbox did before) against one confirm wait per batch
(services.common.messaging.outbox.BatchPublisher), on a private vhost.

    PYTHONPATH=. .venv/bin/python -m bench.publish_micro --count 2000
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402

import argparse  # noqa: E402
import time  # noqa: E402

from kombu import Exchange  # noqa: E402
from nameko.amqp.publish import Publisher  # noqa: E402

from bench.run import Vhost  # noqa: E402
from services.common.messaging.events import new_event  # noqa: E402
from services.common.messaging.outbox import BATCH_SIZE, BatchPublisher  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args(argv)
    exchange = Exchange("micro.events", type="topic", durable=True)
    events = [new_event("micro", "thing_happened", {"n": n, "text": "x" * 200}) for n in range(args.count)]
    with Vhost() as vhost:
        one = Publisher(vhost.amqp_uri, declare=[exchange])
        started = time.perf_counter()
        for body in events:
            one.publish(body, exchange=exchange, routing_key="thing_happened", message_id=body["id"])
        single = args.count / (time.perf_counter() - started)

        batch = BatchPublisher(vhost.amqp_uri, exchange)
        started = time.perf_counter()
        for i in range(0, args.count, BATCH_SIZE):
            batch.publish([("thing_happened", body, {}) for body in events[i:i + BATCH_SIZE]])
        batched = args.count / (time.perf_counter() - started)
        batch.close()
    print("one confirm per event:   {:7.0f} events/s".format(single))
    print("one confirm per batch:   {:7.0f} events/s (batches of up to {})".format(batched, BATCH_SIZE))


if __name__ == "__main__":
    main()
