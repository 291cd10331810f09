"""orders dies after committing orders and before their events left: the
outbox rows survive the crash and the next process sends them, each order
taking effect once.

The broker is made unreachable (through the test's own proxy) so that the
window between commit and publish stays open until the process is killed.
"""
import time


def test_events_committed_before_a_crash_are_delivered_after_the_restart(broker_proxy, fault_run):
    proxy, proxied_uri = broker_proxy
    run = fault_run(AMQP_URI=proxied_uri)
    proxy.cut()
    with run.streaming(rate=10) as stream:
        stream.accepted_after(10)
    time.sleep(0.5)
    waiting = run.databases.unpublished()
    assert waiting >= 10, "the orders' events should still be in the outbox"
    run.system.kill("orders")  # SIGKILL: no shutdown, no flush

    proxy.restore()
    run.system.start("orders")
    run.assert_everything_settled(timeout=60)
