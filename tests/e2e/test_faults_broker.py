"""The services lose RabbitMQ while orders stream in, and get it back.

A real broker restart is staged with a TCP proxy between the services and
the broker (see tests/support/proxy.py): the broker on a test machine is shared with
other test runs and must not be stopped. Cutting the proxy closes every AMQP
connection the services hold and refuses new ones, exactly what they see
when the broker goes down; restoring it is the broker coming back.
test_faults_broker_restart.py restarts a private broker node for real.
"""
import time



def test_services_reconnect_by_themselves_and_every_accepted_order_settles(broker_proxy, fault_run):
    proxy, proxied_uri = broker_proxy
    run = fault_run(AMQP_URI=proxied_uri)
    with run.streaming(rate=20) as stream:
        stream.accepted_after(20)
        connections_before = proxy.connections
        proxy.cut()
        cut_at = len(stream.accepted)
        time.sleep(3)
        during = len(stream.accepted) - cut_at
        proxy.restore()
        restored_at = len(stream.accepted)
        stream.accepted_after(restored_at + 30)
    # orders are taken while the broker is away: the outbox holds their events
    assert during > 0, stream.outcomes
    assert set(stream.outcomes) == {202}, (stream.outcomes, stream.bad_bodies[:3])
    run.assert_everything_settled(timeout=60)
    assert proxy.connections > connections_before, "the services never reconnected"
