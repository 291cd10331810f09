"""Inventory and notifications have no API port: they answer /health and /ready
(broker and their own database, nothing else) on their metrics port."""
import pytest
import requests

from services.inventory.service import InventoryService
from services.notifications.service import NotificationsService
from tests.support import free_port


@pytest.mark.parametrize("backend", ["sqlite"])
def test_health_and_ready_on_the_metrics_port(runner_factory, service_config):
    ports = {"inventory": free_port(), "notifications": free_port()}
    service_config["METRICS_PORTS"] = dict(ports, orders=0)
    runner = runner_factory(service_config, InventoryService, NotificationsService)
    runner.start()
    for service, port in ports.items():
        base = "http://127.0.0.1:{}".format(port)
        health = requests.get(base + "/health", timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "ok", "service": service})
        ready = requests.get(base + "/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "service": service, "checks": {"broker": "ok", "database": "ok"}}
        assert "nameko_entrypoint_calls" in requests.get(base + "/metrics", timeout=5).text
