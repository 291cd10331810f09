"""What an operator sees of a running system: traces, logs and metrics.

The services run as real processes with ``LOG_DIR`` set, so the per-service
trace files are what is checked; metrics are scraped over HTTP and parsed
with prometheus_client's own text parser.
"""
import glob
import json
import os
import pathlib
import subprocess
import uuid
from types import SimpleNamespace

import pytest
import requests
from nameko.standalone.events import event_dispatcher
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually, free_port, tokens
from tests.support.system import ROOT

EMAIL = "carol.customer@example.com"
MASKED = "c***@example.com"


def observed(system):
    """``system`` writing trace files under its log directory's ``log/``, with a metrics port per service."""
    system.log_path = pathlib.Path(system.log_dir) / "log"
    system.metrics_ports = {"orders": free_port(), "inventory": free_port(), "notifications": free_port()}
    system.env.update({
        "LOG_DIR": str(system.log_path),
        "ORDERS_METRICS_PORT": str(system.metrics_ports["orders"]),
        "INVENTORY_METRICS_PORT": str(system.metrics_ports["inventory"]),
        "NOTIFICATIONS_METRICS_PORT": str(system.metrics_ports["notifications"]),
    })
    return system


def traces(log_dir, service):
    path = os.path.join(str(log_dir), "{}.trace.log".format(service))
    if not os.path.exists(path):
        return []
    with open(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def settled(system, order_id):
    order = system.order(order_id)
    return order if order["status"] != "pending" else None


def run_trace(system, *args):
    return subprocess.run(["bash", os.path.join(ROOT, "run.sh"), "trace", *args],
                          env=system.env, capture_output=True, text=True, timeout=60)


# One order placed with an X-Request-ID and followed to its notification; each test
# below checks one thing an operator sees of it.

@pytest.fixture(scope="module")
def traced(module_service_config, module_system):
    system = observed(module_system(module_service_config()))
    system.start()
    system.create_products(("OBS-1", "Lamp", 1999, 10))
    request_id = "obs-" + uuid.uuid4().hex[:12]
    response = system.place_order(EMAIL, [("OBS-1", 2)], headers={"X-Request-ID": request_id})
    assert response.status_code == 202, response.text
    order = eventually(lambda: settled(system, response.json()["id"]), message="order settled")
    with system.rpc() as rpc:
        notes = eventually(lambda: rpc.notifications.list_notifications(order_id=order["id"], status="sent"),
                           message="notification sent")

    def calls(service):
        return {(line["kind"], line["entrypoint"]): line
                for line in traces(system.log_path, service) if line["correlation_id"] == request_id}

    orders, inventory, notifications = eventually(
        lambda: (calls("orders"), calls("inventory"), calls("notifications")) if calls("notifications") else None,
        message="notification trace")
    return SimpleNamespace(system=system, request_id=request_id, response=response, order=order, notes=notes,
                           orders=orders, inventory=inventory, notifications=notifications)


@pytest.fixture(scope="module")
def timelines(traced):
    """``./run.sh trace KEY --json`` for the request id and for the order id: {key: (result, timeline)}."""
    found = {}
    for key in (traced.request_id, traced.order["id"]):
        result = run_trace(traced.system, key, "--json")
        assert result.returncode == 0, result.stderr
        found[key] = result, json.loads(result.stdout)
    return found


def test_the_request_id_comes_back_and_stays_on_the_confirmed_order(traced):
    assert traced.response.headers["X-Request-ID"] == traced.request_id
    assert traced.order["status"] == "confirmed"
    assert traced.order["correlation_id"] == traced.request_id


def test_the_notification_carries_the_request_id(traced):
    assert [note["correlation_id"] for note in traced.notes] == [traced.request_id]


def test_each_service_traces_its_hops_of_the_order_under_the_request_id(traced):
    assert set(traced.orders) == {("http", "http_place_order"), ("event", "confirm_order")}
    assert set(traced.inventory) == {("event", "reserve_stock")}
    assert set(traced.notifications) == {("event", "order_confirmed")}


def test_every_hop_is_traced_as_a_timed_success(traced):
    for line in [*traced.orders.values(), *traced.inventory.values(), *traced.notifications.values()]:
        assert line["outcome"] == "success"
        assert line["duration_ms"] >= 0
        assert line["call_id"].startswith(line["service"] + "." + line["entrypoint"] + ".")
        assert line["started_at"] <= line["timestamp"]


def test_each_trace_says_what_was_called_without_the_body(traced):
    placed = traced.orders["http", "http_place_order"]
    assert placed["call"] == {"request": {"method": "POST", "path": "/orders",
                                          "content_length": placed["call"]["request"]["content_length"]}}
    assert placed["http_status"] == 202
    assert traced.inventory["event", "reserve_stock"]["call"]["event_type"] == "order_created"


def test_the_hops_started_in_causal_order(traced):
    assert traced.orders["http", "http_place_order"]["started_at"] \
        <= traced.inventory["event", "reserve_stock"]["started_at"] \
        <= traced.orders["event", "confirm_order"]["started_at"] \
        <= traced.notifications["event", "order_confirmed"]["started_at"]


# ./run.sh trace puts the same story together, from the databases and the trace files,
# found by the request id or by the order id

def test_run_sh_trace_finds_the_order_by_request_id_or_order_id(traced, timelines):
    for _, timeline in timelines.values():
        assert timeline["order"]["id"] == traced.order["id"]


def test_run_sh_trace_masks_the_customer_address(timelines):
    for result, timeline in timelines.values():
        assert timeline["order"]["customer_email"] == MASKED
        assert EMAIL not in result.stdout


def test_run_sh_trace_times_each_hop_of_the_saga(timelines):
    for _, timeline in timelines.values():
        hops = {(hop["event"], hop["to"]): hop for hop in timeline["hops"]}
        assert set(hops) == {("order_created", "inventory.reserve_stock"),
                             ("stock_reserved", "orders.confirm_order"),
                             ("order_confirmed", "notifications.notify")}
        for hop in hops.values():
            assert hop["outbox_wait_ms"] >= 0 and hop["total_ms"] >= 0
            assert isinstance(hop["delivery_ms"], float)
            assert hop["handler_started_ms"] >= 0 and hop["handler_ms"] > 0  # from the trace files


def test_run_sh_trace_lists_every_step_in_time_order(timelines):
    for _, timeline in timelines.values():
        steps = timeline["steps"]
        assert [step["at"] for step in steps] == sorted(step["at"] for step in steps)
        assert {step["service"] for step in steps} == {"orders", "inventory", "notifications"}
        from_traces = [step for step in steps if step["source"] == "trace"]
        assert len(from_traces) == 4 and all(step["duration_ms"] is not None for step in from_traces)
        assert any(step["what"] == "HTTP POST /orders -> 202" for step in from_traces)
        assert any(step["what"].startswith("notification order_confirmed via")
                   and step["what"].endswith(": sent") for step in steps)
        assert any(": attempt 1 sent" in step["what"] for step in steps)


def test_run_sh_trace_prints_a_table_without_json(traced):
    table = run_trace(traced.system, traced.request_id)
    assert table.returncode == 0, table.stderr
    assert "hops" in table.stdout and "order_created" in table.stdout


# A refused order (with an X-Request-ID), a good one, and an operator's search by the
# customer's address; each test below checks one thing the logs and traces show of them.

@pytest.fixture(scope="module")
def refused(module_service_config, module_system):
    system = observed(module_system(module_service_config()))
    system.start()
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
    return SimpleNamespace(system=system, failed=failed)


def test_a_refused_call_is_traced_once_with_its_exception_as_expected(refused):
    failed = refused.failed
    assert len(failed) == 1
    assert failed[0]["outcome"] == "error"
    assert failed[0]["exception_type"] == "InvalidInput"
    assert failed[0]["exception_expected"] is True
    assert failed[0]["http_status"] == 400


def test_each_service_writes_a_log_file_and_a_trace_file(refused):
    log_path = refused.system.log_path
    assert {os.path.basename(path) for path in glob.glob(str(log_path / "*.log"))} == {
        "{}{}.log".format(service, suffix) for service in ("orders", "inventory", "notifications")
        for suffix in ("", ".trace")}


def test_no_log_or_trace_file_holds_the_address_only_its_masked_form(refused):
    # neither the trace files, the plain log files nor stdout hold the address
    system = refused.system
    written = glob.glob(str(system.log_path / "*.log")) + glob.glob(os.path.join(system.log_dir, "*.log"))
    seen_masked = False
    for path in written:
        with open(path) as stream:
            text = stream.read()
        assert EMAIL not in text, path
        assert EMAIL.replace("@", "%40") not in text, path
        seen_masked = seen_masked or MASKED in text
    assert seen_masked  # the notification log names the customer, masked


def test_a_search_by_address_is_traced_with_the_address_masked(refused):
    queries = [line["call"]["request"].get("query", "") for line in traces(refused.system.log_path, "orders")
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


# Orders placed on PostgreSQL (the other scenarios here run on SQLite): one refused, two
# confirmed, one rejected for want of stock; each test below checks one thing the metrics
# (or the trace tool) show of them.

@pytest.fixture(scope="module")
def metered(module_service_config, module_system):
    system = observed(module_system(module_service_config("postgresql")))
    system.start()
    system.create_products(("OBS-3", "Desk", 10000, 2))
    orders_url = "http://127.0.0.1:{}/metrics".format(system.metrics_ports["orders"])
    inventory_url = "http://127.0.0.1:{}/metrics".format(system.metrics_ports["inventory"])
    notifications_url = "http://127.0.0.1:{}/".format(system.metrics_ports["notifications"])
    before = scrape(orders_url)

    assert system.place_order(EMAIL, [("OBS-3", 0)]).status_code == 400
    placed = [system.place_order(EMAIL, [("OBS-3", 1)]) for _ in range(3)]  # the third is rejected
    assert [response.status_code for response in placed] == [202, 202, 202]
    for response in placed:
        eventually(lambda: settled(system, response.json()["id"]), message="order settled")
    with system.rpc() as rpc:
        eventually(lambda: len(rpc.notifications.list_notifications(status="sent")) == 3,
                   message="3 notifications sent")

    return SimpleNamespace(
        system=system, placed=placed, orders_url=orders_url, inventory_url=inventory_url, before=before,
        after=scrape(orders_url), inventory=eventually(lambda: scrape(inventory_url), message="inventory metrics"),
        notifications=scrape(notifications_url))


def test_metrics_are_not_on_the_public_api_port(metered):
    # not on the public API port, where customers are
    assert requests.get(metered.system.url("/metrics"), timeout=5).status_code == 404


def test_before_any_order_the_counters_and_gauges_are_exported_at_zero(metered):
    before = metered.before
    assert value(before, "nameko_entrypoint_calls_total", unused=True, entrypoint="http_place_order") == 0
    assert value(before, "outbox_waiting", service="orders") == 0
    assert value(before, "dead_letters_waiting", queue="orders.dead-letters") == 0


def test_each_order_placed_is_counted_and_timed(metered):
    success = dict(entrypoint="http_place_order", kind="http", outcome="success", service="orders")
    assert value(metered.after, "nameko_entrypoint_calls_total", **success) == 3
    assert value(metered.after, "nameko_entrypoint_duration_seconds_count", **success) == 3
    assert value(metered.after, "nameko_entrypoint_duration_seconds_bucket", le="+Inf", **success) == 3
    assert value(metered.after, "nameko_entrypoint_duration_seconds_sum", **success) > 0


def test_a_clients_mistake_is_counted_apart_from_ours(metered):
    assert value(metered.after, "nameko_entrypoint_calls_total", entrypoint="http_place_order",
                 outcome="expected_error") == 1


def test_orders_counts_the_inventory_answers_it_handled(metered):
    # messages, not calls: answers that arrive together are one call (a batch)
    assert value(metered.after, "nameko_entrypoint_messages_total", entrypoint="confirm_order") == 2
    assert value(metered.after, "nameko_entrypoint_messages_total", entrypoint="reject_order") == 1
    assert 1 <= value(metered.after, "nameko_entrypoint_calls_total", entrypoint="confirm_order") <= 2


def test_orders_by_status_follows_the_orders(metered):
    assert value(metered.after, "orders_by_status", status="confirmed") == 2
    assert value(metered.after, "orders_by_status", status="rejected") == 1


def test_the_outbox_age_and_the_process_are_exported(metered):
    assert ("outbox_oldest_waiting_age_seconds", (("service", "orders"),)) in metered.after
    assert value(metered.after, "process_resident_memory_bytes") > 0


def test_inventory_counts_its_reservation_decisions(metered):
    inventory = metered.inventory
    assert value(inventory, "nameko_entrypoint_messages_total", entrypoint="reserve_stock", outcome="success") == 3
    assert value(inventory, "inventory_reservations_by_status", status="reserved") == 2
    assert value(inventory, "inventory_reservations_by_status", status="rejected") == 1
    assert value(inventory, "dead_letters_waiting", queue="inventory.dead-letters") == 0


def test_inventorys_outbox_gauge_drains(metered):
    # A row waits until the broker confirms it and the next mark (within 0.1 s). The
    # confirm of a persistent message can come after its consumers have already
    # acted on it, so the gauge may still show rows when the orders have settled.
    eventually(lambda: value(scrape(metered.inventory_url), "outbox_waiting", service="inventory") == 0,
               message="inventory's outbox drained")


def test_notifications_counts_what_it_sent(metered):
    notifications = metered.notifications
    assert value(notifications, "notifications_by_status", status="sent") == 3
    assert value(notifications, "nameko_entrypoint_calls_total", service="notifications",
                 outcome="success") >= 3
    assert value(notifications, "dead_letters_waiting", queue="notifications.dead-letters") == 0


def test_run_sh_trace_reads_postgresql_too(metered):
    confirmed_id = metered.placed[0].json()["id"]
    result = run_trace(metered.system, confirmed_id, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["hops"]) == 3


def test_a_message_no_retry_can_fix_is_counted_as_a_dead_letter_and_a_failed_call(metered):
    dispatch = event_dispatcher(metered.system.config)
    dispatch("inventory", "stock_reserved", {"not": "an event"})

    def dead_lettered():
        found = scrape(metered.orders_url)
        return (value(found, "dead_letters_waiting", queue="orders.dead-letters") == 1
                and value(found, "nameko_entrypoint_calls_total", entrypoint="confirm_order",
                          outcome="error") == 1)

    eventually(dead_lettered, message="a dead letter and a failed call counted")
