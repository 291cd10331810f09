"""Arguments of the durable queues the services consume, by ``QUEUE_TYPE``.

Every durable queue a service consumes (its event handler queues, their
retry queues, its dead-letter queue and its ``rpc-<service>`` queue) is
declared with the arguments returned here, so that one setting decides
whether they are classic queues (one node holds each) or quorum queues
(replicated over a majority of a RabbitMQ cluster, surviving the loss of a
minority). Every declaration of a queue must carry the same arguments, or
RabbitMQ refuses it (``PRECONDITION_FAILED - inequivalent arg``): that is
why all of them go through this one function.
"""
CLASSIC = "classic"
QUORUM = "quorum"
QUEUE_TYPES = (CLASSIC, QUORUM)
QUEUE_TYPE_KEY = "QUEUE_TYPE"


class InvalidQueueType(ValueError):
    """``QUEUE_TYPE`` is neither classic nor quorum: refuse to start rather than guess."""


def queue_type(config):
    value = (config or {}).get(QUEUE_TYPE_KEY)
    value = CLASSIC if value in (None, "") else str(value).strip().lower()
    if value not in QUEUE_TYPES:
        raise InvalidQueueType("{} must be one of {}, not {!r}".format(
            QUEUE_TYPE_KEY, ", ".join(QUEUE_TYPES), value))
    return value


def queue_arguments(config, extra=None, **more):
    """The ``queue_arguments`` of a durable consumed queue: ``extra``/``more`` plus the queue type.

    Classic queues get no ``x-queue-type`` at all, exactly what the services
    declared before this setting existed, so an existing deployment's queues
    still match. Quorum queues that dead-letter (the retry queues, whose
    expired messages go back to the queue they failed in) do it
    at-least-once: RabbitMQ's default for dead-lettering is at-most-once,
    which drops a message whose target queue cannot take it at that moment
    (its leader being elected after a node loss). At-least-once needs
    ``x-overflow: reject-publish``; with no length limit set, nothing is
    ever rejected for length.
    """
    arguments = dict(extra or {}, **more)
    if queue_type(config) == QUORUM:
        arguments["x-queue-type"] = QUORUM
        if "x-dead-letter-exchange" in arguments:
            arguments.setdefault("x-dead-letter-strategy", "at-least-once")
            arguments.setdefault("x-overflow", "reject-publish")
    return arguments
