"""The three services as real ``nameko run`` processes, the way run.sh starts them.

Each system gets its own RabbitMQ vhost, its own databases and its own HTTP
port, so several can run side by side; logs go to files under the test's
temporary directory and are printed when a test fails.
"""
import os
import signal
import subprocess
import sys
import time

import requests
from nameko.standalone.rpc import ClusterRpcProxy

from scripts.wait_ready import wait_ready
from services.common import errors  # noqa: F401  (typed remote errors for callers)
from tests.support import eventually, tokens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMEKO = os.path.join(os.path.dirname(sys.executable), "nameko")
CLASSES = {"orders": "OrdersService", "inventory": "InventoryService",
           "notifications": "NotificationsService"}


class System:
    def __init__(self, config, log_dir, extra_env=None):
        self.config = config
        self.log_dir = log_dir
        self.port = int(config["WEB_SERVER_ADDRESS"].rsplit(":", 1)[1])
        self.base_url = "http://127.0.0.1:{}".format(self.port)
        # inventory's admin API (catalogue writes)
        self.admin_base_url = "http://{}".format(config.get("INVENTORY_WEB_SERVER_ADDRESS", ""))
        self.processes = {}  # (service, instance) -> Popen
        self.env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore")
        self.env.update({key: str(value) for key, value in config.items()
                         if key.isupper() and isinstance(value, (int, float, str))})
        for key, uri in config["DB_URIS"].items():
            self.env["{}_DB_URI".format(key.split(":")[0].upper())] = uri
        self.env.update(extra_env or {})

    # processes -------------------------------------------------------------------

    def start(self, *services, instance=1, wait=True, env=None):
        """Start processes; ``env`` adds variables for these processes only."""
        for service in services or CLASSES:
            log = open(os.path.join(self.log_dir, "{}.{}.log".format(service, instance)), "ab")
            self.processes[service, instance] = subprocess.Popen(
                [NAMEKO, "run", "--config", os.path.join(ROOT, "config.yaml"),
                 "services.{}.service:{}".format(service, CLASSES[service])],
                cwd=ROOT, env=dict(self.env, **(env or {})), stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(*(services or CLASSES))
        return self

    def wait_ready(self, *services, timeout=60):
        missing = wait_ready(self.config, timeout, services or tuple(CLASSES))
        assert not missing, "not ready: {}\n{}".format(missing, self.logs())
        if "orders" in (services or CLASSES):
            self._wait_http(timeout)

    def _wait_http(self, timeout):
        eventually(lambda: requests.get(self.url("/health"), timeout=1).ok, timeout=timeout,
                   message=lambda: "orders HTTP to come up\n" + self.logs())

    def stop(self, service, instance=1, sig=signal.SIGTERM, timeout=30):
        process = self.processes.pop((service, instance))
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("{} did not stop within {}s after {}".format(service, timeout, sig))

    def kill(self, service, instance=1):
        return self.stop(service, instance, signal.SIGKILL)

    def stop_all(self, timeout=30):
        processes, self.processes = list(self.processes.values()), {}
        stop_together(processes, timeout)

    def logs(self, tail=80):
        text = []
        for name in sorted(os.listdir(self.log_dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.log_dir, name), errors="replace") as stream:
                    lines = [line for line in stream if '"timestamp"' not in line]
                text.append("--- {}\n{}".format(name, "".join(lines[-tail:])))
        return "\n".join(text)

    # talking to it -----------------------------------------------------------------

    def url(self, path):
        return self.base_url + path

    def admin_url(self, path):
        """A URL of inventory's admin API."""
        return self.admin_base_url + path

    def rpc(self, timeout=10):
        return ClusterRpcProxy(self.config, timeout=timeout)

    def create_products(self, *products):
        """Create (sku, name, price, stock) products and wait until orders knows them."""
        with self.rpc() as rpc:
            for sku, name, price, stock in products:
                rpc.inventory.create_product(sku, name, price, stock)
        skus = {product[0] for product in products}

        def known():
            with self.rpc() as rpc:
                return skus <= {item["sku"] for item in rpc.orders.list_catalogue()}

        eventually(known, timeout=15, message=lambda: "orders to learn of {}\n{}".format(skus, self.logs()))

    def place_order(self, email, lines, headers=None, **kwargs):
        """POST /orders for ``email``, with that customer's token."""
        return requests.post(self.url("/orders"), json={
            "customer_email": email,
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines]},
            headers=dict(tokens.customer(email), **(headers or {})), timeout=10, **kwargs)

    def order(self, order_id):
        """An order as an operator sees it (any customer's)."""
        response = requests.get(self.url("/orders/{}".format(order_id)), headers=tokens.admin(), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


def stop_together(processes, timeout=30):
    """SIGTERM every process at once, then wait for them all; kill what outlives ``timeout``.

    One at a time, each stop waits for the one before (about a second per
    nameko service).
    """
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
