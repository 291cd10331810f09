"""A service killed with SIGKILL while orders stream in, then restarted:
every accepted order still reaches its final state, no event is lost or
applied twice, and stock is conserved."""
import time

import pytest


# The kills, once for the module; each test below checks one thing that holds after them.

@pytest.fixture(scope="module")
def killed(module_fault_run):
    run = module_fault_run()
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
    return run


def test_clients_see_refused_connections_while_orders_is_down_never_an_error_body(killed):
    outcomes = killed.stream.outcomes
    assert set(outcomes) <= {202, "ConnectionError"}, outcomes
    assert outcomes["ConnectionError"] > 0, "orders was not killed mid-stream"


def test_every_accepted_order_settles_once(killed):
    killed.assert_everything_settled()
