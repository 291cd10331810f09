"""Probes and log lines as a platform sees them, on real ``nameko run`` processes.

Inventory and notifications serve ``/health`` and ``/ready`` on their metrics
port (orders on its HTTP port), and with ``LOG_FORMAT=json`` every line a
service writes is one JSON object carrying the request's correlation id.
"""
import json
import os
import uuid

import pytest
import requests

from tests.support import eventually, free_port
from tests.support.system import System

EMAIL = "dora.deploy@example.com"


@pytest.fixture
def probed(service_config, tmp_path, request, broker_proxy):
    proxy, proxied_uri = broker_proxy
    ports = {"inventory": free_port(), "notifications": free_port()}
    config = dict(service_config, AMQP_URI=proxied_uri)
    running = System(config, str(tmp_path), extra_env={
        "LOG_FORMAT": "json",
        "READY_TIMEOUT": "1",
        "INVENTORY_METRICS_PORT": str(ports["inventory"]),
        "NOTIFICATIONS_METRICS_PORT": str(ports["notifications"]),
    })
    running.metrics_ports = ports
    running.proxy = proxy
    yield running
    running.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(running.logs())


def probe(port, path):
    response = requests.get("http://127.0.0.1:{}{}".format(port, path), timeout=5)
    return response.status_code, response.json()


def test_inventory_and_notifications_answer_health_and_ready_on_their_metrics_port(probed):
    system = probed.start("inventory", "notifications")
    for service, port in system.metrics_ports.items():
        assert probe(port, "/health") == (200, {"status": "ok", "service": service})
        status, body = probe(port, "/ready")
        assert status == 200, body
        assert body == {"status": "ready", "service": service,
                        "checks": {"broker": "ok", "database": "ok"}}
        # the metrics are still served on the same port
        metrics = requests.get("http://127.0.0.1:{}/metrics".format(port), timeout=5)
        assert metrics.status_code == 200 and "nameko_entrypoint_calls" in metrics.text


def test_ready_turns_503_while_the_broker_is_unreachable_and_health_stays_200(probed):
    system = probed.start("inventory", "notifications")
    system.proxy.cut()
    try:
        for service, port in system.metrics_ports.items():
            status, body = probe(port, "/ready")
            assert status == 503, body
            assert body["status"] == "not_ready"
            assert body["checks"]["broker"] != "ok" and body["checks"]["database"] == "ok"
            assert "amqp://" not in json.dumps(body)  # no URI (or its password) in the answer
            assert probe(port, "/health")[0] == 200
    finally:
        system.proxy.restore()
    for port in system.metrics_ports.values():
        eventually(lambda: probe(port, "/ready")[0] == 200, timeout=30, message="ready again")


def _json_lines(path):
    with open(path) as stream:
        lines = [line for line in stream if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError("not a JSON line in {}: {!r}".format(os.path.basename(path), line))
    return parsed


def test_log_format_json_gives_one_json_object_per_line_with_the_correlation_id(probed):
    system = probed.start()
    system.create_products(("LOGS-1", "Kettle", 2500, 5))
    request_id = "deploy-" + uuid.uuid4().hex[:12]
    placed = system.place_order(EMAIL, [("LOGS-1", 1)], headers={"X-Request-ID": request_id})
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]
    eventually(lambda: system.order(order_id)["status"] == "confirmed", message="confirmed")

    def queued():
        return [line for line in _json_lines(os.path.join(system.log_dir, "notifications.1.log"))
                if line.get("logger") == "services.notifications.handlers" and order_id in line["message"]]
    notified = eventually(queued, message="notification queued")

    reserved = [line for line in _json_lines(os.path.join(system.log_dir, "inventory.1.log"))
                if line.get("logger") == "services.inventory.handlers" and order_id in line.get("message", "")]
    assert reserved, "inventory logged nothing about the order"
    for line in reserved + notified:
        assert line["correlation_id"] == request_id
        assert line["level"] == "INFO"
        assert line["timestamp"].startswith("20")
        assert {"trace_id", "span_id"} <= set(line)
    for service in ("orders", "inventory", "notifications"):
        text = open(os.path.join(system.log_dir, "{}.1.log".format(service))).read()
        assert EMAIL not in text
        _json_lines(os.path.join(system.log_dir, "{}.1.log".format(service)))  # every line parses
