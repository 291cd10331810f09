"""orders dies after committing orders and before their events left: the
outbox rows survive the crash and the next process sends them, each order
taking effect once.

The broker is made unreachable (through the test's own proxy) so that the
window between commit and publish stays open until the process is killed.
"""
import time

from tests.support.faults import SKUS, Databases, OrderStream, assert_everything_settled, make_system


def test_events_committed_before_a_crash_are_delivered_after_the_restart(
        service_config, tmp_path, broker_proxy):
    proxy, proxied_uri = broker_proxy
    system = make_system(service_config, tmp_path, AMQP_URI=proxied_uri)
    databases = Databases(system.config)
    try:
        system.start()
        system.create_products(*SKUS)
        proxy.cut()
        stream = OrderStream(system, rate=10).start()
        try:
            stream.accepted_after(10)
        finally:
            stream.stop()
        time.sleep(0.5)
        waiting = databases.unpublished()
        assert waiting >= 10, "the orders' events should still be in the outbox"
        system.kill("orders")  # SIGKILL: no shutdown, no flush

        proxy.restore()
        system.start("orders")
        assert_everything_settled(stream, databases, timeout=60)
    finally:
        databases.close()
        system.stop_all()
