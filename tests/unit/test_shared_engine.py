"""One engine per database per process: every provider's reservation lands on the same pool."""
from types import SimpleNamespace

from services.common.db.database import ServiceDatabase, shared_engine
from services.orders.models import OrdersBase

URI = "postgresql://orders@127.0.0.1:5432/orders_shared_engine_test"  # never connected to


def container(pool_size=34, **config):
    return SimpleNamespace(service_name="orders", config=dict({"DB_URIS": {"orders:OrdersBase": URI}}, **config),
                           _worker_pool=SimpleNamespace(size=pool_size))


def test_every_provider_of_a_process_shares_one_engine_sized_by_their_reservations():
    orders = container(pool_size=5, DB_POOL_SIZE=40)
    database = ServiceDatabase(OrdersBase)
    database.container = orders
    database.setup()
    outbox, metrics = shared_engine(orders, "OrdersBase", 2), shared_engine(orders, "OrdersBase", 1)
    try:
        engine = database.engine
        assert outbox.engine is engine and metrics.engine is engine
        assert database.Session.kw["bind"] is engine
        assert engine.pool.size() == 5 + 2 + 1  # the workers, then the outbox and metrics
        assert engine.pool._max_overflow == 0  # private: no public accessor; overflow would churn
        assert engine.url.query.get("application_name") is None  # sent as a connect argument instead
    finally:
        database.stop()
        outbox.release()
    assert metrics.engine is engine, "disposed before its last user released it"
    metrics.release()
    fresh = shared_engine(orders, "OrdersBase", 1)
    assert fresh.engine is not engine, "the last release must dispose the engine"
    fresh.release()


def test_a_database_server_pool_is_capped_at_db_pool_size():
    orders = container(pool_size=34)
    reservation = shared_engine(orders, "OrdersBase", lambda: 34)
    try:
        assert reservation.engine.pool.size() == 8  # config.yaml's default
    finally:
        reservation.release()
