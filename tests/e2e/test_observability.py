"""What an operator sees of a running system: traces, logs and metrics.

The services run as real processes with ``LOG_DIR`` set, so the per-service
trace files are what is checked; metrics are scraped over HTTP and parsed
with prometheus_client's own text parser.
"""
import glob
import json
import os
import subprocess
import uuid

import pytest
import requests
from nameko.standalone.events import event_dispatcher
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually, free_port, tokens
from tests.support.system import ROOT, System

EMAIL = "carol.customer@example.com"
MASKED = "c***@example.com"


@pytest.fixture
def observed(service_config, tmp_path, request):
    log_dir = tmp_path / "log"
    ports = {"orders": free_port(), "inventory": free_port(), "notifications": free_port()}
    running = System(service_config, str(tmp_path), extra_env={
        "LOG_DIR": str(log_dir),
        "ORDERS_METRICS_PORT": str(ports["orders"]),
        "INVENTORY_METRICS_PORT": str(ports["inventory"]),
        "NOTIFICATIONS_METRICS_PORT": str(ports["notifications"]),
    })
    running.log_path = log_dir
    running.metrics_ports = ports
    yield running
    running.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(running.logs())


def traces(log_dir, service):
    path = os.path.join(str(log_dir), "{}.trace.log".format(service))
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def settled(system, order_id):
    order = system.order(order_id)
    return order if order["status"] != "pending" else None


def test_one_request_id_is_in_every_services_traces_and_on_the_notification(observed):
    system = observed.start()
    system.create_products(("OBS-1", "Lamp", 1999, 10))
    request_id = "obs-" + uuid.uuid4().hex[:12]

    response = system.place_order(EMAIL, [("OBS-1", 2)], headers={"X-Request-ID": request_id})
    assert response.status_code == 202, response.text
    assert response.headers["X-Request-ID"] == request_id
    order = eventually(lambda: settled(system, response.json()["id"]), message="order settled")
    assert order["status"] == "confirmed"
    assert order["correlation_id"] == request_id

    with system.rpc() as rpc:
        notes = eventually(lambda: rpc.notifications.list_notifications(order_id=order["id"], status="sent"),
                           message="notification sent")
    assert [note["correlation_id"] for note in notes] == [request_id]

    def calls(service):
        return {(line["kind"], line["entrypoint"]): line
                for line in traces(system.log_path, service) if line["correlation_id"] == request_id}

    story = eventually(lambda: (calls("orders"), calls("inventory"), calls("notifications"))
                       if calls("notifications") else None, message="notification trace")
    orders, inventory, notifications = story
    assert set(orders) == {("http", "http_place_order"), ("event", "confirm_order")}
    assert set(inventory) == {("event", "reserve_stock")}
    assert set(notifications) == {("event", "order_confirmed")}
    for line in [*orders.values(), *inventory.values(), *notifications.values()]:
        assert line["outcome"] == "success"
        assert line["duration_ms"] >= 0
        assert line["call_id"].startswith(line["service"] + "." + line["entrypoint"] + ".")
        assert line["started_at"] <= line["timestamp"]
    placed = orders["http", "http_place_order"]
    assert placed["call"] == {"request": {"method": "POST", "path": "/orders",
                                          "content_length": placed["call"]["request"]["content_length"]}}
    assert placed["http_status"] == 202
    assert inventory["event", "reserve_stock"]["call"]["event_type"] == "order_created"
    # the hops started in causal order
    assert placed["started_at"] <= inventory["event", "reserve_stock"]["started_at"] \
        <= orders["event", "confirm_order"]["started_at"] <= notifications["event", "order_confirmed"]["started_at"]


    # ./run.sh trace puts the same story together, from the databases and the trace files
    for key in (request_id, order["id"]):
        result = subprocess.run(["bash", os.path.join(ROOT, "run.sh"), "trace", key, "--json"],
                                env=system.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        timeline = json.loads(result.stdout)
        assert timeline["order"]["id"] == order["id"]
        assert timeline["order"]["customer_email"] == MASKED
        assert EMAIL not in result.stdout
        hops = {(hop["event"], hop["to"]): hop for hop in timeline["hops"]}
        assert set(hops) == {("order_created", "inventory.reserve_stock"),
                             ("stock_reserved", "orders.confirm_order"),
                             ("order_confirmed", "notifications.notify")}
        for hop in hops.values():
            assert hop["outbox_wait_ms"] >= 0 and hop["total_ms"] >= 0
            assert isinstance(hop["delivery_ms"], float)
            assert hop["handler_started_ms"] >= 0 and hop["handler_ms"] > 0  # from the trace files
        steps = timeline["steps"]
        assert [step["at"] for step in steps] == sorted(step["at"] for step in steps)
        assert {step["service"] for step in steps} == {"orders", "inventory", "notifications"}
        traced = [step for step in steps if step["source"] == "trace"]
        assert len(traced) == 4 and all(step["duration_ms"] is not None for step in traced)
        assert any(step["what"] == "HTTP POST /orders -> 202" for step in traced)
        assert any(step["what"].startswith("notification order_confirmed via")
                   and step["what"].endswith(": sent") for step in steps)
        assert any(": attempt 1 sent" in step["what"] for step in steps)

    table = subprocess.run(["bash", os.path.join(ROOT, "run.sh"), "trace", request_id],
                           env=system.env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "hops" in table.stdout and "order_created" in table.stdout


def test_failed_calls_are_traced_with_their_exception_and_emails_are_masked_everywhere(observed):
    system = observed.start()
    system.create_products(("OBS-2", "Chair", 5000, 1))
    request_id = "bad-" + uuid.uuid4().hex[:12]

    response = system.place_order(EMAIL, [("NO-SUCH-SKU", 1)], headers={"X-Request-ID": request_id})
    assert response.status_code == 400, response.text
    good = system.place_order(EMAIL, [("OBS-2", 1)])
    assert good.status_code == 202
    # an operator's search puts the address in a query string, percent-encoded
    searched = requests.get(system.url("/orders"), params={"customer_email": EMAIL}, headers=tokens.admin(),
                            timeout=10)
    assert searched.status_code == 200 and "%40" in searched.url
    eventually(lambda: settled(system, good.json()["id"]), message="order settled")
    with system.rpc() as rpc:
        eventually(lambda: rpc.notifications.list_notifications(order_id=good.json()["id"]),
                   message="notification")

    failed = eventually(lambda: [line for line in traces(system.log_path, "orders")
                                 if line["correlation_id"] == request_id], message="error trace")
    assert len(failed) == 1
    assert failed[0]["outcome"] == "error"
    assert failed[0]["exception_type"] == "InvalidInput"
    assert failed[0]["exception_expected"] is True
    assert failed[0]["http_status"] == 400

    # neither the trace files, the plain log files nor stdout hold the address
    written = glob.glob(str(system.log_path / "*.log")) + glob.glob(os.path.join(system.log_dir, "*.log"))
    assert {os.path.basename(path) for path in glob.glob(str(system.log_path / "*.log"))} == {
        "{}{}.log".format(service, suffix) for service in ("orders", "inventory", "notifications")
        for suffix in ("", ".trace")}
    seen_masked = False
    for path in written:
        with open(path) as stream:
            text = stream.read()
        assert EMAIL not in text, path
        assert EMAIL.replace("@", "%40") not in text, path
        seen_masked = seen_masked or MASKED in text
    assert seen_masked  # the notification log names the customer, masked
    queries = [line["call"]["request"].get("query", "") for line in traces(system.log_path, "orders")
               if line["entrypoint"] == "http_list_orders"]
    assert queries == ["customer_email=c***%40example.com"]


class Samples(dict):
    """``{(sample name, labels): value}`` of one scrape, and the metric families it declared."""

    families = frozenset()


def scrape(url):
    response = requests.get(url, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = Samples()
    families = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    samples.families = frozenset(families)
    return samples


def value(samples, name, unused=False, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``.

    A sample that is not there is a failure, not a 0: a renamed or lost
    metric would otherwise pass every ``== 0``. Only with ``unused`` (a
    labelled counter nothing has counted yet, which exports no sample) may
    it be absent, and then its family must still be declared.
    """
    found = [found for (sample, sample_labels), found in samples.items()
             if sample == name and set(labels.items()) <= set(sample_labels)]
    if unused:
        family = name[:-len("_total")] if name.endswith("_total") else name
        assert family in samples.families or found, "metric {} is not exported".format(name)
    else:
        assert found, "no sample {}{} in the scrape".format(name, labels)
    return sum(found)


@pytest.mark.parametrize("backend", ["postgresql"])  # the other tests here run on SQLite
def test_metrics_parse_and_move_when_orders_are_placed(observed):
    system = observed.start()
    system.create_products(("OBS-3", "Desk", 10000, 2))
    orders_url = "http://127.0.0.1:{}/metrics".format(system.metrics_ports["orders"])
    # not on the public API port, where customers are
    assert requests.get(system.url("/metrics"), timeout=5).status_code == 404
    inventory_url = "http://127.0.0.1:{}/metrics".format(system.metrics_ports["inventory"])
    notifications_url = "http://127.0.0.1:{}/".format(system.metrics_ports["notifications"])

    before = scrape(orders_url)
    assert value(before, "nameko_entrypoint_calls_total", unused=True, entrypoint="http_place_order") == 0
    assert value(before, "outbox_waiting", service="orders") == 0
    assert value(before, "dead_letters_waiting", queue="orders.dead-letters") == 0

    assert system.place_order(EMAIL, [("OBS-3", 0)]).status_code == 400
    placed = [system.place_order(EMAIL, [("OBS-3", 1)]) for _ in range(3)]  # the third is rejected
    assert [response.status_code for response in placed] == [202, 202, 202]
    for response in placed:
        eventually(lambda: settled(system, response.json()["id"]), message="order settled")
    with system.rpc() as rpc:
        eventually(lambda: len(rpc.notifications.list_notifications(status="sent")) == 3,
                   message="3 notifications sent")

    after = scrape(orders_url)
    success = dict(entrypoint="http_place_order", kind="http", outcome="success", service="orders")
    assert value(after, "nameko_entrypoint_calls_total", **success) == 3
    assert value(after, "nameko_entrypoint_duration_seconds_count", **success) == 3
    assert value(after, "nameko_entrypoint_duration_seconds_bucket", le="+Inf", **success) == 3
    assert value(after, "nameko_entrypoint_duration_seconds_sum", **success) > 0
    assert value(after, "nameko_entrypoint_calls_total", entrypoint="http_place_order",
                 outcome="expected_error") == 1  # the client's mistake, told apart from ours
    assert value(after, "nameko_entrypoint_calls_total", entrypoint="confirm_order") == 2
    assert value(after, "nameko_entrypoint_calls_total", entrypoint="reject_order") == 1
    assert value(after, "orders_by_status", status="confirmed") == 2
    assert value(after, "orders_by_status", status="rejected") == 1
    assert ("outbox_oldest_waiting_age_seconds", (("service", "orders"),)) in after
    assert value(after, "process_resident_memory_bytes") > 0

    inventory = eventually(lambda: scrape(inventory_url), message="inventory metrics")
    assert value(inventory, "nameko_entrypoint_calls_total", entrypoint="reserve_stock", outcome="success") == 3
    assert value(inventory, "inventory_reservations_by_status", status="reserved") == 2
    assert value(inventory, "inventory_reservations_by_status", status="rejected") == 1
    # A row waits until the broker confirms it and the next mark (within 0.1 s). The
    # confirm of a persistent message can come after its consumers have already
    # acted on it, so the gauge may still show rows when the orders have settled.
    eventually(lambda: value(scrape(inventory_url), "outbox_waiting", service="inventory") == 0,
               message="inventory's outbox drained")
    assert value(inventory, "dead_letters_waiting", queue="inventory.dead-letters") == 0

    # a message no retry can fix goes to the dead letters, and the error is counted
    dispatch = event_dispatcher(system.config)
    dispatch("inventory", "stock_reserved", {"not": "an event"})

    def dead_lettered():
        found = scrape(orders_url)
        return (value(found, "dead_letters_waiting", queue="orders.dead-letters") == 1
                and value(found, "nameko_entrypoint_calls_total", entrypoint="confirm_order",
                          outcome="error") == 1)

    eventually(dead_lettered, message="a dead letter and a failed call counted")

    # the trace tool reads the same databases (PostgreSQL here)
    confirmed_id = placed[0].json()["id"]
    result = subprocess.run(["bash", os.path.join(ROOT, "run.sh"), "trace", confirmed_id, "--json"],
                            env=system.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["hops"]) == 3

    notifications = scrape(notifications_url)
    assert value(notifications, "notifications_by_status", status="sent") == 3
    assert value(notifications, "nameko_entrypoint_calls_total", service="notifications",
                 outcome="success") >= 3
    assert value(notifications, "dead_letters_waiting", queue="notifications.dead-letters") == 0
