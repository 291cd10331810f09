"""Listing and replaying a service's dead-letter queue.

Works straight against RabbitMQ, so it needs neither the service nor its
database to be up: ``python -m services.common.messaging.deadletters list orders``.
Listing takes messages without acknowledging them and closes the channel,
which puts them back; replaying sends each to the queue it failed in
(through the service's redelivery exchange, as retries go), with
a fresh attempt count, and removes it from the dead-letter queue only once
the broker confirmed the copy *and* a queue took it: it is published
``mandatory``, so a dead letter whose queue was deleted comes back
(``basic.return``) and stays in the dead-letter queue instead of vanishing.

``waiting SERVICE`` lists the service's outbox events that no queue has
received yet (over RPC: the service must be running).
"""
import argparse
import json
import logging
import sys

from kombu import Connection

from services.common.messaging.brokers import ssl_options
from services.common.messaging.consumers import ATTEMPT_HEADER, dead_letter_queue, dead_letter_queue_name, redelivery_exchange
from services.common.errors import InvalidInput
from services.common.messaging.rpc import rpc

log = logging.getLogger(__name__)

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
    # declared exactly as the services declare it (same arguments), or RabbitMQ refuses
    queue = dead_letter_queue(config or {}, service_name)
    channel = connection.channel()
    bound = queue(channel)
    bound.declare()
    return channel, bound


def list_dead_letters(amqp_uri, service_name, limit=100, config=None):
    with Connection(amqp_uri, transport_options={"max_retries": 1}, ssl=ssl_options(config)) as connection:
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
    """Send the dead letters waiting now (up to ``limit``) back to the queues they failed in; return how many.

    A dead letter whose queue no longer exists is kept (unacked until the
    channel closes, then back in the dead-letter queue) and not counted.
    """
    replayed = 0
    returned = []
    with Connection(amqp_uri, transport_options={"max_retries": 1, "confirm_publish": True},
                    ssl=ssl_options(config)) as connection:
        channel, queue = _open(connection, service_name, config)
        # the return of an unroutable mandatory message arrives before its confirm
        channel.events["basic_return"].add(lambda exc, exchange, routing_key, message: returned.append(routing_key))
        producer = connection.Producer(channel=channel)
        exchange = redelivery_exchange(service_name)
        kept = 0
        # the letters waiting now, no more: one that fails again while this runs is
        # dead-lettered anew behind them and must wait for the next replay, not loop
        waiting = queue.queue_declare(passive=True).message_count
        limit = waiting if limit is None else min(limit, waiting)
        try:
            while replayed + kept < limit:
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
                del returned[:]
                # through the service's own redelivery exchange, bound to its own
                # queues only: a forged x-original-queue cannot reach another service's
                producer.publish(
                    message.body, exchange=exchange, routing_key=target, headers=headers, mandatory=True,
                    content_type=message.content_type, content_encoding=message.content_encoding,
                    delivery_mode=2, message_id=message.properties.get("message_id"),
                )
                if returned:  # no such queue: keep it, unacked, so it goes back on close
                    kept += 1
                    continue
                message.ack()
                replayed += 1
        finally:
            channel.close()
    if kept:
        log.warning("%d dead letter(s) of %s kept: the queue they failed in does not exist (any more); "
                    "start the service that consumes it, then replay again", kept, service_name)
    return replayed


class DeadLetterRpc:
    """RPC methods every service offers on its own dead-letter queue."""

    @rpc(expected_exceptions=InvalidInput)
    def list_dead_letters(self, limit=100):
        return list_dead_letters(self.config["AMQP_URI"], self.name, _limit(limit), config=self.config)

    @rpc(expected_exceptions=InvalidInput)
    def replay_dead_letters(self, limit=None):
        return replay_dead_letters(self.config["AMQP_URI"], self.name,
                                   None if limit is None else _limit(limit), config=self.config)

    @rpc(expected_exceptions=InvalidInput)
    def list_waiting_events(self, limit=100):
        """Outbox events not yet received by any queue (unsent, or unroutable and retried)."""
        outbox = getattr(self, "outbox", None)
        return outbox.waiting(_limit(limit, 1000)) if outbox is not None else []


MAX_LIMIT = 100_000


def _limit(limit, most=MAX_LIMIT):
    """A count from an RPC caller: a whole number from 1 to ``most``, or InvalidInput."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidInput("limit must be a whole number from 1 to {}.".format(most),
                           details={"limit": ["Must be from 1 to {}.".format(most)]})
    return limit


def main(argv=None):
    from services.common.settings import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "replay", "waiting"])
    parser.add_argument("service", choices=["orders", "inventory", "notifications"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    amqp_uri = config["AMQP_URI"]
    if args.action == "waiting":
        from nameko.standalone.rpc import ClusterRpcProxy

        with ClusterRpcProxy(config, timeout=10) as proxy:
            events = getattr(proxy, args.service).list_waiting_events(args.limit or 100)
        json.dump(events, sys.stdout, indent=2, default=str)
        print()
        print("{} outbox event(s) of {} not received by any queue yet ({} unroutable)".format(
            len(events), args.service, sum(1 for event in events if event["unroutable"])), file=sys.stderr)
    elif args.action == "list":
        letters = list_dead_letters(amqp_uri, args.service, args.limit or 100, config=config)
        json.dump(letters, sys.stdout, indent=2, default=str)
        print()
        print("{} dead letter(s) in {}".format(len(letters), dead_letter_queue_name(args.service)), file=sys.stderr)
    else:
        count = replay_dead_letters(amqp_uri, args.service, args.limit, config=config)
        print("replayed {} message(s) from {}".format(count, dead_letter_queue_name(args.service)))


if __name__ == "__main__":
    main()
