"""./run.sh as a newcomer uses it: it sets up, runs the three services with
prefixed logs, seeds the demo catalogue once, and stops them all on SIGTERM."""
import os
import signal
import subprocess

import requests

from tests.system import ROOT
from tests.helpers import eventually


def start_run_sh(system, log_path):
    env = dict(system.env, PYTHONWARNINGS="ignore")
    log = open(log_path, "wb")
    return subprocess.Popen([os.path.join(ROOT, "run.sh")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def children_alive(pid):
    out = subprocess.run(["pgrep", "-s", str(pid), "-f", "nameko run"], capture_output=True, text=True)
    return [line for line in out.stdout.split() if line]


def test_run_sh_runs_seeds_once_and_stops_everything_on_sigterm(system, tmp_path):
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
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)
    eventually(lambda: not children_alive(again.pid), timeout=20, message="services stopped")
