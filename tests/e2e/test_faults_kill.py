"""A service killed with SIGKILL while orders stream in, then restarted:
every accepted order still reaches its final state, no event is lost or
applied twice, and stock is conserved."""
import time

from tests.support.faults import SKUS, Databases, OrderStream, assert_everything_settled


def test_inventory_then_orders_killed_mid_stream_lose_nothing(system):
    system.start()
    system.create_products(*SKUS)
    databases = Databases(system.config)
    stream = OrderStream(system, rate=25).start()
    try:
        stream.accepted_after(20)
        system.kill("inventory")  # mid-transaction, unacked deliveries, unpublished outbox rows
        time.sleep(1.0)
        system.start("inventory")
        stream.accepted_after(len(stream.accepted) + 20)
        system.kill("orders")  # in-flight HTTP requests and committed-but-unpublished events
        time.sleep(0.5)
        system.start("orders")
        stream.accepted_after(len(stream.accepted) + 20)
    finally:
        stream.stop()
    try:
        # while orders was down clients saw refused or reset connections, never a 5xx body
        assert set(stream.outcomes) <= {202, "ConnectionError"}, stream.outcomes
        assert stream.outcomes["ConnectionError"] > 0, "orders was not killed mid-stream"
        assert_everything_settled(stream, databases)
    finally:
        databases.close()
