"""./run.sh as a newcomer uses it: it sets up, runs the three services with
prefixed logs, seeds the demo catalogue once, creates a development signing
key so that `./run.sh token EMAIL` prints a token the running system
accepts, and stops them all on SIGTERM."""
import os
import signal
import subprocess

import pytest
import requests
from urllib.parse import quote

from services.common.messaging import broker_grants

from tests.support import eventually
from tests.support.system import ROOT


def run_sh_env(system, tmp_path):
    """The system's settings, less the test's token key: run.sh's own development key instead."""
    env = {name: value for name, value in system.env.items() if not name.startswith("JWT_")}
    env.update(PYTHONWARNINGS="ignore", JWT_DEV_PRIVATE_KEY_FILE=str(tmp_path / "dev-jwt-key.pem"),
               BROKER_CREDENTIALS_FILE=str(tmp_path / "broker-credentials.env"))
    return env


def connected_users(vhost):
    """The users of the AMQP connections open on ``vhost`` (management API)."""
    connections = broker_grants.Management("http://127.0.0.1:15672", "guest", "guest").request(
        "GET", "/api/vhosts/{}/connections".format(quote(vhost, safe="")))
    return {connection["user"] for connection in connections}


@pytest.fixture
def run_sh_broker_users(system):
    """The users run.sh creates on the test's vhost, deleted afterwards (users are global to the broker)."""
    vhost = broker_grants.local_admin(system.env["AMQP_URI"])[1]
    prefix = broker_grants.user_prefix(vhost)
    yield vhost, prefix
    broker_grants.remove(broker_grants.Management("http://127.0.0.1:15672", "guest", "guest"), prefix)


def start_run_sh(system, log_path):
    env = run_sh_env(system, log_path.parent)
    log = open(log_path, "wb")
    return subprocess.Popen([os.path.join(ROOT, "run.sh")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def children_alive(pid):
    out = subprocess.run(["pgrep", "-s", str(pid), "-f", "nameko run"], capture_output=True, text=True)
    return [line for line in out.stdout.split() if line]


def test_run_sh_runs_seeds_once_and_stops_everything_on_sigterm(system, tmp_path, run_sh_broker_users):
    log_path = tmp_path / "run.log"
    process = start_run_sh(system, log_path)
    try:
        def seeded():
            products = requests.get(system.url("/products"), timeout=2).json()["products"]
            return len(products) == 3 and products
        products = eventually(seeded, timeout=90, message="demo catalogue")
        assert {product["sku"] for product in products} == {"WIDGET-1", "GADGET-1", "GIZMO-1"}
        assert len(children_alive(process.pid)) == 3
        eventually(lambda: "orders HTTP API on http://" in log_path.read_text(), message="address printed")
        log = log_path.read_text()
        for service in ("orders", "inventory", "notifications"):
            assert "[{}.1]".format(service) in log
        # each service on the broker as its own user, with a password kept private
        vhost, prefix = run_sh_broker_users
        own = {prefix + service for service in ("orders", "inventory", "notifications")}
        # the management API's connection list lags a few seconds behind
        eventually(lambda: own <= connected_users(vhost), timeout=15, message="connections as the services' users")
        assert "guest" not in connected_users(vhost)
        assert (tmp_path / "broker-credentials.env").stat().st_mode & 0o777 == 0o600

    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    eventually(lambda: not children_alive(process.pid), timeout=20, message="services stopped")
    # a clean stop: every service wound its own threads down, nameko had nothing left to kill
    assert "killing managed thread" not in log_path.read_text()

    again = start_run_sh(system, tmp_path / "run2.log")
    try:
        eventually(lambda: "catalogue already has products" in (tmp_path / "run2.log").read_text(),
                   timeout=90, message="second start")
        assert len(requests.get(system.url("/products"), timeout=5).json()["products"]) == 3

        # the README's commands: a token for a customer, alone on stdout, accepted at once.
        # On the second run: the first one's stop is asserted clean, and a stop right
        # after requests kills orders' HTTP connection threads (so does main's code).
        assert (tmp_path / "dev-jwt-key.pem").exists()
        assert oct((tmp_path / "dev-jwt-key.pem").stat().st_mode & 0o777) == "0o600"
        printed = subprocess.run([os.path.join(ROOT, "run.sh"), "token", "ann@example.com"], cwd=ROOT,
                                 env=run_sh_env(system, tmp_path), capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, printed.stderr
        token = printed.stdout.strip()
        assert printed.stdout == token + "\n" and token.count(".") == 2
        auth = {"Authorization": "Bearer " + token}
        placed = requests.post(system.url("/orders"), headers=auth, timeout=10,
                               json={"lines": [{"sku": "WIDGET-1", "quantity": 1}]})
        assert placed.status_code == 202, placed.text
        assert placed.json()["customer_email"] == "ann@example.com"
        assert [order["id"] for order in requests.get(system.url("/orders"), headers=auth, timeout=10)
                .json()["orders"]] == [placed.json()["id"]]
        assert requests.get(system.url("/orders"), timeout=10).status_code == 401
        admin = subprocess.run([os.path.join(ROOT, "run.sh"), "token", "--admin"], cwd=ROOT,
                               env=run_sh_env(system, tmp_path), capture_output=True, text=True, timeout=60)
        # the catalogue's writes: inventory's own admin API, with the same tokens
        restocked = requests.post(system.admin_url("/products/GIZMO-1/restock"), json={"quantity": 1}, timeout=10,
                                  headers={"Authorization": "Bearer " + admin.stdout.strip()})
        assert restocked.status_code == 200, restocked.text
        refused = requests.post(system.admin_url("/products/GIZMO-1/restock"), json={"quantity": 1}, timeout=10,
                                headers=auth)
        assert refused.status_code == 403, refused.text
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)
    eventually(lambda: not children_alive(again.pid), timeout=20, message="services stopped")
