import pytest
from kombu import Connection, Exchange
from nameko.standalone.rpc import ClusterRpcProxy

from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from services.orders.service import OrdersService

ALL_SERVICES = (InventoryService, OrdersService, NotificationsService)


@pytest.fixture
def publish_raw(service_config):
    """Publish a message straight to a service's event exchange, as a broker would redeliver it."""
    def publish(source, routing_key, body, **properties):
        with Connection(service_config["AMQP_URI"]) as connection:
            producer = connection.Producer()
            producer.publish(body, exchange=Exchange("{}.events".format(source), type="topic", durable=True),
                             routing_key=routing_key, serializer="json", retry=True, **properties)
    return publish


@pytest.fixture
def rpc(service_config):
    with ClusterRpcProxy(service_config, timeout=10) as proxy:
        yield proxy


@pytest.fixture
def running(runner_factory, service_config):
    """All three services in this process, on the test's vhost and databases."""
    runner = runner_factory(service_config, *ALL_SERVICES)
    runner.start()
    return runner


@pytest.fixture
def statements():
    """The SQL statements sent through SQLAlchemy while the test runs (writes deferred to a COMMIT are not)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sent = []

    def note(connection, cursor, statement, parameters, context, executemany):
        sent.append(" ".join(statement.split()))
    event.listen(Engine, "before_cursor_execute", note)
    yield sent
    event.remove(Engine, "before_cursor_execute", note)
