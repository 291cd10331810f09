"""A service killed with SIGKILL while orders stream in, then restarted:
every accepted order still reaches its final state, no event is lost or
applied twice, and stock is conserved."""
import time



def test_inventory_then_orders_killed_mid_stream_lose_nothing(fault_run):
    run = fault_run()
    system = run.system
    with run.streaming(rate=25) as stream:
        stream.accepted_after(20)
        system.kill("inventory")  # mid-transaction, unacked deliveries, unpublished outbox rows
        time.sleep(1.0)
        system.start("inventory")
        stream.accepted_after(len(stream.accepted) + 20)
        system.kill("orders")  # in-flight HTTP requests and committed-but-unpublished events
        time.sleep(0.5)
        system.start("orders")
        stream.accepted_after(len(stream.accepted) + 20)
    # while orders was down clients saw refused or reset connections, never a 5xx body
    assert set(stream.outcomes) <= {202, "ConnectionError"}, stream.outcomes
    assert stream.outcomes["ConnectionError"] > 0, "orders was not killed mid-stream"
    run.assert_everything_settled()
