"""Listing and replaying a service's dead-letter queue.

Works straight against RabbitMQ, so it needs neither the service nor its
database to be up: ``python -m services.common.deadletters list orders``.
Listing takes messages without acknowledging them and closes the channel,
which puts them back; replaying sends each to the queue it failed in, with
a fresh attempt count, and removes it from the dead-letter queue only once
the broker confirmed the copy.
"""
import argparse
import json
import sys

from kombu import Connection, Queue

from .consumers import ATTEMPT_HEADER, dead_letter_queue_name
from .queues import queue_arguments
from .rpc import rpc

ERROR_HEADERS = ("x-original-queue", "x-error-type", "x-error-message", "x-attempts", "x-dead-lettered-at")


def _describe(message):
    headers = message.headers or {}
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        body = message.body.decode("utf-8", "replace") if isinstance(message.body, bytes) else message.body
    described = {key.replace("x-", "", 1).replace("-", "_"): headers.get(key) for key in ERROR_HEADERS}
    described.update({"message_id": message.properties.get("message_id"), "body": body})
    return described


def _open(connection, service_name, config=None):
    # declared with the consumers' arguments (QUEUE_TYPE), or the broker refuses the declaration
    queue = Queue(dead_letter_queue_name(service_name), durable=True, queue_arguments=queue_arguments(config))
    channel = connection.channel()
    bound = queue(channel)
    bound.declare()
    return channel, bound


def list_dead_letters(amqp_uri, service_name, limit=100, config=None):
    with Connection(amqp_uri, transport_options={"max_retries": 1}) as connection:
        channel, queue = _open(connection, service_name, config)
        found = []
        try:
            while len(found) < limit:
                message = queue.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                found.append(_describe(message))
        finally:
            channel.close()  # unacknowledged messages go back to the queue
        return found


def replay_dead_letters(amqp_uri, service_name, limit=None, config=None):
    """Send dead letters back to the queues they failed in; return how many."""
    replayed = 0
    with Connection(amqp_uri, transport_options={"max_retries": 1, "confirm_publish": True}) as connection:
        channel, queue = _open(connection, service_name, config)
        producer = connection.Producer(channel=channel)
        try:
            while limit is None or replayed < limit:
                message = queue.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                headers = {
                    key: value for key, value in (message.headers or {}).items()
                    if key not in ERROR_HEADERS and key != ATTEMPT_HEADER
                    and not key.startswith("x-original-")
                }
                target = (message.headers or {}).get("x-original-queue")
                if not target:
                    message.reject(requeue=True)
                    break
                producer.publish(
                    message.body, exchange="", routing_key=target, headers=headers,
                    content_type=message.content_type, content_encoding=message.content_encoding,
                    delivery_mode=2, message_id=message.properties.get("message_id"),
                )
                message.ack()
                replayed += 1
        finally:
            channel.close()
    return replayed


class DeadLetterRpc:
    """RPC methods every service offers on its own dead-letter queue."""

    @rpc
    def list_dead_letters(self, limit=100):
        return list_dead_letters(self.config["AMQP_URI"], self.name, limit, self.config)

    @rpc
    def replay_dead_letters(self, limit=None):
        return replay_dead_letters(self.config["AMQP_URI"], self.name, limit, self.config)


def main(argv=None):
    from .settings import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "replay"])
    parser.add_argument("service", choices=["orders", "inventory", "notifications"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    amqp_uri = config["AMQP_URI"]
    if args.action == "list":
        letters = list_dead_letters(amqp_uri, args.service, args.limit or 100, config)
        json.dump(letters, sys.stdout, indent=2, default=str)
        print()
        print("{} dead letter(s) in {}".format(len(letters), dead_letter_queue_name(args.service)), file=sys.stderr)
    else:
        count = replay_dead_letters(amqp_uri, args.service, args.limit, config)
        print("replayed {} message(s) from {}".format(count, dead_letter_queue_name(args.service)))


if __name__ == "__main__":
    main()
