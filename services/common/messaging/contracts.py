"""Events as declared contracts: a name and the schema its data is dumped with.

Each service lists what it publishes in its own ``events.py``, once; the
unit of work dumps an event's data through its schema when it is staged
(``uow.publish(events.STOCK_RESERVED, data)``), so what goes out is what the
declaration says. Consumers keep their own read schemas (no imports across
services); ``tests/contract`` checks that every producer's dumps load with
every consumer's schema.
"""


class Published:
    """An event a service publishes.

    ``optional``: an integration event with no consumer in this system by
    design; the outbox counts it sent when it reaches no queue.
    """

    __slots__ = ("name", "schema", "optional")

    def __init__(self, name, schema, optional=False):
        self.name = name
        self.schema = schema
        self.optional = optional

    def dump(self, data):
        return self.schema.dump(data)

    def __repr__(self):
        return "Published({!r})".format(self.name)


def published(*declared):
    """The tuple a service's ``events.PUBLISHED`` is, checked for repeated names."""
    names = [event.name for event in declared]
    if len(names) != len(set(names)):
        raise ValueError("an event is declared twice: {}".format(names))
    return tuple(declared)


def optional_names(declared):
    """The names of the ``optional`` events, for the ``Outbox``."""
    return tuple(event.name for event in declared if event.optional)
