"""The benchmark: the system's orders per second against a Nameko baseline, in one run.

``./run.sh bench [--quick] [--db postgresql] [--instances 1,2]``

1. Baseline: ``bench/baseline.py`` (an ``@http`` route making one RPC to an
   echo service) as two real ``nameko run`` processes.
2. The system: the three services as real processes (``tests/support/system.py``), a
   catalogue with plenty of stock, orders placed over HTTP.
3. The baseline again: ratios are against the mean of its two measurements,
   which bracket the system's (the machine's speed drifts within minutes).
Both are driven by ``bench/loadgen.py`` at the same levels, each on a private
RabbitMQ vhost (created through the management API, deleted afterwards) and,
for the system, fresh databases. Completion (confirmed and notified) is read
from the services' own databases after each level, from the timestamps they
wrote: order ``created_at``, the ``confirmed`` status change, the
notification's ``sent_at`` (delivered, not just queued).

Figures go to ``var/bench/bench-<time>.json`` (and ``latest.json``), a chart to
``var/bench/bench-<time>.png``, and a table to stdout.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402  (tests.support.system uses nameko's standalone RPC)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import psutil  # noqa: E402
import requests  # noqa: E402

from scripts.throwaway import create_database, drop_database, free_port  # noqa: E402
from services.common.db.database import read_only  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "var", "bench")
NAMEKO = os.path.join(os.path.dirname(sys.executable), "nameko")
MGMT = os.environ.get("RABBIT_MGMT_URL", "http://127.0.0.1:15672")
MGMT_AUTH = (os.environ.get("RABBIT_MGMT_USER", "guest"), os.environ.get("RABBIT_MGMT_PASSWORD", "guest"))
PG_ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URI_TEMPLATE = os.environ.get("BENCH_PG_URI", "postgresql://postgres@127.0.0.1:5432/{}")
SKUS = ["BENCH-{:02d}".format(i) for i in range(20)]
STOCK = 10_000_000
DRAIN_TIMEOUT = 30.0


def say(*args):
    print(*args, file=sys.stderr, flush=True)


# infrastructure ------------------------------------------------------------------------

class Vhost:
    """A private RabbitMQ vhost, made and removed through the management API."""

    def __init__(self):
        self.name = "bench_" + uuid.uuid4().hex[:10]
        self.amqp_uri = "amqp://guest:guest@127.0.0.1:5672/{}".format(self.name)

    def __enter__(self):
        requests.put("{}/api/vhosts/{}".format(MGMT, self.name), auth=MGMT_AUTH, timeout=10).raise_for_status()
        requests.put("{}/api/permissions/{}/{}".format(MGMT, self.name, MGMT_AUTH[0]), auth=MGMT_AUTH,
                     json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
        return self

    def __exit__(self, *exc):
        requests.delete("{}/api/vhosts/{}".format(MGMT, self.name), auth=MGMT_AUTH, timeout=30)


class Databases:
    """Fresh, migrated databases for the three services; dropped afterwards."""

    def __init__(self, backend, directory):
        self.backend = backend
        self.directory = directory
        self.created = []
        self.uris = {}

    def __enter__(self):
        from services.common.db.migrate import SERVICES

        for service, base in SERVICES.items():
            uri, name = create_database(service, self.backend, self.directory, PG_ADMIN_DSN, PG_URI_TEMPLATE,
                                        prefix="bench")
            if name:
                self.created.append(name)
            self.uris["{}:{}".format(service, base)] = uri
        return self

    def __exit__(self, *exc):
        for name in self.created:
            drop_database(PG_ADMIN_DSN, name)


def postgres_backends(database_names):
    """PIDs of the PostgreSQL backends the services hold on this run's databases (the server is local).

    The pools keep their connections, so the backends of a level are those
    open at its start; the benchmark's own reads use other application names.
    """
    import psycopg2

    if not database_names:
        return []
    connection = psycopg2.connect(PG_ADMIN_DSN)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND application_name = ANY(%s)",
                           (list(database_names), ["orders", "inventory", "notifications"]))
            return [pid for pid, in cursor.fetchall()]
    finally:
        connection.close()


def wait_every_instance(vhost, system, instances, timeout=60):
    """Until every process is up: consuming its service's RPC queue and, for orders, listening.

    ``System.start`` is satisfied once a service answers, which the first
    instance does: a load that began then kept all of its keep-alive
    connections on the first orders process (the kernel spreads
    connections over the processes listening on the port as they are
    accepted), and the others served no HTTP at all.
    """
    deadline = time.monotonic() + timeout
    pids = [process.pid for (service, _), process in system.processes.items() if service == "orders"]
    while True:
        consumers = {service: requests.get("{}/api/queues/{}/rpc-{}".format(MGMT, vhost.name, service),
                                           auth=MGMT_AUTH, timeout=10).json().get("consumers", 0)
                     for service in {service for service, _ in system.processes}}
        listening = [pid for pid in pids if any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == system.port
            for c in psutil.Process(pid).net_connections("tcp"))]
        if all(count >= instances for count in consumers.values()) and len(listening) == len(pids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("not every instance came up: {} consumers, {} of {} orders processes listening"
                               .format(consumers, len(listening), len(pids)))
        time.sleep(0.25)


def broker_process():
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            return process
    return None


class Meter:
    """CPU seconds and resident memory of named processes over a level.

    ``groups``: name -> a callable giving the PIDs of several processes counted
    as one (PostgreSQL's backends), read again at the start of every level;
    only their CPU is reported.
    """

    def __init__(self, processes, groups=None):
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.groups = dict(groups or {})
        self.peak = {name: 0 for name in self.processes}
        self._start = {}
        self._group_start = {}
        self._sampler = None
        self._running = False

    def _group_cpu(self, pids):
        cpu = {}
        for pid in pids:
            try:
                cpu[pid] = self._cpu(psutil.Process(pid))
            except psutil.Error:
                pass
        return cpu

    def _cpu(self, process):
        times = process.cpu_times()
        return times.user + times.system

    def _sample(self):
        while self._running:
            for name, process in self.processes.items():
                try:
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)
                except psutil.Error:
                    pass
            eventlet.sleep(0.25)

    def start(self):
        self.peak = {name: 0 for name in self.processes}
        self._start = {}
        for name, process in self.processes.items():
            try:
                self._start[name] = self._cpu(process)
            except psutil.Error:
                pass
        self._group_start = {name: self._group_cpu(pids()) for name, pids in self.groups.items()}
        self._t0 = time.monotonic()
        self._running = True
        self._sampler = eventlet.spawn(self._sample)

    def stop(self):
        self._running = False
        self._sampler.wait()
        wall = time.monotonic() - self._t0
        figures = {}
        for name, process in self.processes.items():
            try:
                cpu = self._cpu(process) - self._start.get(name, 0)
                rss = process.memory_info().rss
            except psutil.Error:
                figures[name] = {"gone": True}
                continue
            figures[name] = {"cpu_s": round(cpu, 2), "cpu_pct": round(100 * cpu / wall, 1),
                             "peak_rss_mb": round(max(self.peak[name], rss) / 2 ** 20, 1),
                             "rss_end_mb": round(rss / 2 ** 20, 1)}
        for name, started in self._group_start.items():
            now = self._group_cpu(started)
            cpu = sum(now[pid] - started[pid] for pid in now)
            figures[name] = {"cpu_s": round(cpu, 2), "cpu_pct": round(100 * cpu / wall, 1), "processes": len(now)}
        return figures


# load ------------------------------------------------------------------------------------

def run_load(url, body_file, level, duration, collect_ids, headers=()):
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--body-file", body_file,
               "--duration", str(duration), "--mode", level["mode"]]
    for header in headers:
        command += ["--header", header]
    if level["mode"] == "closed":
        command += ["--concurrency", str(level["value"])]
    else:
        command += ["--rate", str(level["value"])]
    if collect_ids:
        command.append("--collect-ids")
    env = dict(os.environ, PYTHONPATH=ROOT)
    output = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, check=True,
                            timeout=duration + 60).stdout
    return json.loads(output)


def order_bodies(path, count=2000, seed=7):
    rng = random.Random(seed)
    with open(path, "w") as stream:
        for i in range(count):
            skus = rng.sample(SKUS, rng.randint(1, 3))
            stream.write(json.dumps({
                "customer_email": "bench{}@example.com".format(i),
                "lines": [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus],
            }) + "\n")


def echo_bodies(path):
    with open(path, "w") as stream:
        for i in range(100):
            stream.write(json.dumps({"n": i, "text": "hello"}) + "\n")


def levels(args):
    found = [{"mode": "closed", "value": int(v)} for v in args.concurrency.split(",") if v]
    found += [{"mode": "open", "value": float(v)} for v in args.rates.split(",") if v]
    return found


def level_name(level):
    return "c{}".format(level["value"]) if level["mode"] == "closed" else "r{:g}".format(level["value"])


# the baseline ------------------------------------------------------------------------------

def run_baseline(args, work):
    from tests.support.system import stop_together

    body_file = os.path.join(work, "echo.jsonl")
    echo_bodies(body_file)
    port = free_port()
    results = []
    with Vhost() as vhost:
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore", AMQP_URI=vhost.amqp_uri,
                   WEB_SERVER_ADDRESS="127.0.0.1:{}".format(port))
        processes = {}
        try:
            for name, cls in (("echo", "EchoService"), ("gateway", "GatewayService")):
                log = open(os.path.join(work, "baseline-{}.log".format(name)), "ab")
                processes["baseline_" + name] = subprocess.Popen(
                    [NAMEKO, "run", "--config", os.path.join(ROOT, "bench", "baseline.yaml"),
                     "bench.baseline:" + cls], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            url = "http://127.0.0.1:{}/echo".format(port)
            wait_http(url, '{"n": 0}')
            watched = {name: process.pid for name, process in processes.items()}
            broker = broker_process()
            if broker:
                watched["rabbitmq"] = broker.pid
            meter = Meter(watched)
            for level in levels(args):
                meter.start()
                load = run_load(url, body_file, level, args.duration, collect_ids=False)
                procs = meter.stop()
                load.pop("ids", None)
                procs["loadgen"] = {"cpu_s": load["cpu_s"], "cpu_pct": round(100 * load["cpu_s"] / args.duration, 1),
                                    "peak_rss_mb": load["peak_rss_mb"]}
                for figures in procs.values():
                    if load["ok"] and "cpu_s" in figures:
                        figures["cpu_ms_per_request"] = round(1000 * figures["cpu_s"] / load["ok"], 2)
                entry = {"level": level_name(level), "mode": level["mode"], "value": level["value"],
                         "http": load, "processes": procs}
                results.append(entry)
                say("  baseline {:>6}: {:7.1f} req/s  p50 {:6.1f} ms  p99 {:7.1f} ms  errors {}".format(
                    entry["level"], load["ok_per_s"], load["latency_ms"]["p50"] or 0,
                    load["latency_ms"]["p99"] or 0, load["error_count"]))
                time.sleep(args.pause)
        finally:
            stop_together(list(processes.values()), timeout=15)
    return results


def wait_http(url, body, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.post(url, data=body, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("nothing answered at {}".format(url))


# the system ----------------------------------------------------------------------------------

def _utc(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class Completion:
    """Reads, from the services' own databases, when each order was confirmed and notified.

    Its transactions are read-only: on SQLite they take no lock, so polling
    never holds up the services it measures (it held their write lock while
    every transaction began with ``BEGIN IMMEDIATE``).
    """

    def __init__(self, uris):
        from services.common.db.database import make_engine

        self.orders = make_engine(uris["orders:OrdersBase"])
        self.notifications = make_engine(uris["notifications:NotificationsBase"])
        self.inventory = make_engine(uris["inventory:InventoryBase"])

    def read(self, ids):
        from sqlalchemy import text

        found = {}
        for chunk in [ids[i:i + 500] for i in range(0, len(ids), 500)]:
            params = {"p{}".format(i): value for i, value in enumerate(chunk)}
            marks = ", ".join(":" + key for key in params)
            with read_only(self.orders.connect()) as connection:
                for order_id, status, created in connection.execute(text(
                        "SELECT id, status, created_at FROM orders WHERE id IN ({})".format(marks)), params):
                    found[order_id] = {"status": status, "created": _utc(created)}
                for order_id, at in connection.execute(text(
                        "SELECT order_id, at FROM order_status_changes WHERE to_status = 'confirmed' "
                        "AND order_id IN ({})".format(marks)), params):
                    found.setdefault(order_id, {})["confirmed"] = _utc(at)
            with read_only(self.notifications.connect()) as connection:
                for order_id, created in connection.execute(text(
                        "SELECT order_id, MIN(sent_at) FROM notifications WHERE sent_at IS NOT NULL "
                        "AND order_id IN ({}) GROUP BY order_id".format(marks)), params):
                    found.setdefault(order_id, {})["notified"] = _utc(created)
        return found

    def wait(self, ids, timeout):
        """What ``read`` finds for ``ids`` once all are notified (or at ``timeout`` seconds).

        Each poll reads only the orders not yet notified: reading them all
        every time took CPU (the harness's and PostgreSQL's) from the drain
        it was waiting for, and the figures come from the stored timestamps,
        not from when a poll saw them.
        """
        deadline = time.monotonic() + timeout
        found, pending = {}, list(ids)
        while True:
            found.update(self.read(pending))
            pending = [order_id for order_id in pending if not found.get(order_id, {}).get("notified")]
            if not pending or time.monotonic() > deadline:
                return found
            time.sleep(0.25)

    def stock(self):
        from sqlalchemy import text

        with read_only(self.inventory.connect()) as connection:
            return connection.execute(text("SELECT SUM(on_hand), SUM(reserved) FROM products")).one()

    def dispose(self):
        for engine in (self.orders, self.notifications, self.inventory):
            engine.dispose()


def percentiles(values):
    from bench.loadgen import percentile

    values = [v * 1000 for v in values]
    return {"p50": _round(percentile(values, 50)), "p99": _round(percentile(values, 99)),
            "max": _round(max(values)) if values else None}


def _round(value):
    return None if value is None else round(value, 1)


def completion_figures(found, ids):
    rows = [found.get(i, {}) for i in ids]
    created = [r["created"] for r in rows if r.get("created")]
    confirmed = [(r["confirmed"] - r["created"]).total_seconds() for r in rows
                 if r.get("confirmed") and r.get("created")]
    notified = [(r["notified"] - r["created"]).total_seconds() for r in rows
                if r.get("notified") and r.get("created")]
    completed = [r for r in rows if r.get("confirmed") and r.get("notified")]
    span = None
    if completed and created:
        span = (max(r["notified"] for r in completed) - min(created)).total_seconds()
    statuses = {}
    for r in rows:
        statuses[r.get("status", "missing")] = statuses.get(r.get("status", "missing"), 0) + 1
    return {
        "accepted": len(ids),
        "completed": len(completed),
        "completed_per_s": round(len(completed) / span, 1) if span else 0.0,
        "completion_span_s": round(span, 2) if span else None,
        "statuses": statuses,
        "accepted_to_confirmed_ms": percentiles(confirmed),
        "accepted_to_notified_ms": percentiles(notified),
    }


def run_system(args, work, instances, db=None):
    db = db or args.db
    from tests.support import tokens
    from tests.support.system import System

    from services.common.settings import load_config

    body_file = os.path.join(work, "orders.jsonl")
    order_bodies(body_file)
    results = []
    db_dir = tempfile.mkdtemp(prefix="db-", dir=work)
    with Vhost() as vhost, Databases(db, db_dir) as databases:
        config = load_config(os.path.join(ROOT, "config.yaml"))
        config.pop("LOGGING", None)
        config["AMQP_URI"] = vhost.amqp_uri
        config["WEB_SERVER_ADDRESS"] = "127.0.0.1:{}".format(free_port())
        config["INVENTORY_WEB_SERVER_ADDRESS"] = "127.0.0.1:{}".format(free_port())
        config["DB_URIS"] = databases.uris
        # orders are placed by one operator token for many customers: the
        # per-customer rate limit would stop it (every request is still verified)
        config.update(tokens.SETTINGS, ORDER_RATE_LIMIT=0, ANONYMOUS_RATE_LIMIT=0)
        auth = ["Authorization: Bearer " + tokens.admin_token(ttl=6 * 3600)]
        log_dir = tempfile.mkdtemp(prefix="logs-{}x-".format(instances), dir=work)
        extra_env = {}
        if args.log_level:  # an experiment: what the services' logging and tracing cost
            extra_env = {"LOG_LEVEL": args.log_level, "TRACE_LEVEL": args.log_level}
        system = System(config, log_dir, extra_env=extra_env)
        completion = Completion(databases.uris)
        try:
            for instance in range(1, instances + 1):
                system.start(instance=instance)
            wait_every_instance(vhost, system, instances)
            system.create_products(*[(sku, "Bench item " + sku, 100 + i, STOCK) for i, sku in enumerate(SKUS)])
            url = system.url("/orders")
            watched = {"{}.{}".format(service, instance): process.pid
                       for (service, instance), process in system.processes.items()}
            broker = broker_process()
            if broker:
                watched["rabbitmq"] = broker.pid
            groups = {}
            if databases.created:  # PostgreSQL: its backends' CPU is the services' too
                groups["postgresql"] = lambda: postgres_backends(databases.created)
            meter = Meter(watched, groups)
            if args.profile:
                profile_start(args, work, system, instances)
            for level in levels(args):
                meter.start()
                load = run_load(url, body_file, level, args.duration, collect_ids=True, headers=auth)
                ids = load.pop("ids")
                found = completion.wait(ids, DRAIN_TIMEOUT)
                # measured until the level's orders are done, so that CPU per
                # completed order counts all the work they caused
                procs = meter.stop()
                procs["loadgen"] = {"cpu_s": load["cpu_s"], "cpu_pct": round(100 * load["cpu_s"] / args.duration, 1),
                                    "peak_rss_mb": load["peak_rss_mb"]}
                entry = {"level": level_name(level), "mode": level["mode"], "value": level["value"],
                         "http": load, "completion": completion_figures(found, ids), "processes": procs}
                completed = entry["completion"]["completed"]
                for name, figures in procs.items():
                    if completed and "cpu_s" in figures:
                        figures["cpu_ms_per_order"] = round(1000 * figures["cpu_s"] / completed, 2)
                results.append(entry)
                c = entry["completion"]
                say("  system {}x {:>6}: {:7.1f} accepted/s {:7.1f} completed/s  http p99 {:7.1f} ms  "
                    "confirm p99 {} ms  errors {}".format(
                        instances, entry["level"], load["ok_per_s"], c["completed_per_s"],
                        load["latency_ms"]["p99"] or 0, c["accepted_to_confirmed_ms"]["p99"],
                        load["error_count"]))
                time.sleep(args.pause)
            if args.profile:
                profile_stop(work)
            on_hand, reserved = completion.stock()
            sold = sum(entry["completion"]["completed"] for entry in results)
        finally:
            completion.dispose()
            system.stop_all()
    return {"db": db, "instances": instances, "levels": results,
            "stock": {"on_hand": on_hand, "reserved": reserved}, "orders_completed": sold}


_profilers = []


def profile_start(args, work, system, instances):
    """py-spy records every service process for the whole run, as collapsed stacks.

    Only samples taken while a thread holds the GIL are kept (``--gil``): the
    question is where the CPU goes. Without it, py-spy also counts time an
    eventlet process spends waiting in the hub, and the totals per order no
    longer follow the CPU the meter measures; with ``--idle`` a send() that
    waits while the broker is woken on the same core looks like the biggest
    cost. 200 samples a second; the samplers take CPU too, so a profiled
    run's throughput is not a result.
    """
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    for (service, instance), process in system.processes.items():
        out = os.path.join(OUT_DIR, "profile-{}-{}.{}.txt".format(instances, service, instance))
        _profilers.append(subprocess.Popen(
            [spy, "record", "--pid", str(process.pid), "--rate", "200", "--gil", "--format", "raw",
             "--output", out, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def profile_stop(work):
    for spy in _profilers:
        spy.send_signal(signal.SIGINT)
    for spy in _profilers:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
    _profilers.clear()


# report ------------------------------------------------------------------------------------------

def _best_closed(baseline):
    return max((e["http"]["ok_per_s"] for e in baseline if e["mode"] == "closed"), default=0)


def summary(report):
    """Ratios against the baseline measured before the system phases and again after them (their mean).

    The machine's speed drifts within minutes (the baseline's best moved by a
    quarter between consecutive runs here), so a baseline measured once, before
    phases that take minutes, lets the drift decide the ratio; bracketing them
    halves its weight. Both measurements are in the report.
    """
    runs = [baseline for baseline in (report["baseline"], report.get("baseline_after") or []) if baseline]
    bests = [_best_closed(baseline) for baseline in runs]
    best_baseline = sum(bests) / len(bests) if bests else 0
    by_level = {}
    for baseline in runs:
        for entry in baseline:
            by_level.setdefault(entry["level"], []).append(entry["http"]["ok_per_s"])
    for run in report["system"]:
        best = max((e["completion"]["completed_per_s"] for e in run["levels"]), default=0)
        run["best_completed_per_s"] = best
        run["ratio_to_baseline"] = round(best / best_baseline, 3) if best_baseline else None
        for entry in run["levels"]:
            base = by_level.get(entry["level"])
            if base and sum(base):
                entry["ratio_to_baseline_same_level"] = round(
                    entry["completion"]["completed_per_s"] / (sum(base) / len(base)), 3)
    report["baseline_best_req_per_s"] = round(best_baseline, 1)
    report["baseline_best_before_after"] = bests


def table(report):
    bests = report["baseline_best_before_after"]
    lines = ["", "baseline (@http + one RPC): best {:.0f} req/s{}".format(
                 report["baseline_best_req_per_s"],
                 " (mean of {:.0f} before and {:.0f} after the system)".format(*bests) if len(bests) == 2 else ""),
             "{:<10} {:>8} {:>8} {:>8} {:>8}  {}".format("level", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")]
    for when, baseline in (("", report["baseline"]), ("after ", report.get("baseline_after") or [])):
        for e in baseline:
            lat = e["http"]["latency_ms"]
            lines.append("{:<10} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f}  {}".format(
                when + e["level"], e["http"]["ok_per_s"], lat["p50"] or 0, lat["p95"] or 0, lat["p99"] or 0,
                e["http"]["error_count"]))
    for run in report["system"]:
        lines += ["", "system, {} ({}x per service): best {:.0f} completed/s = {:.2f} of baseline".format(
            run.get("db", report["db"]), run["instances"], run["best_completed_per_s"], run["ratio_to_baseline"] or 0),
            "{:<8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>6}  {}".format(
                "level", "accept/s", "compl/s", "p50", "p95", "p99", "conf p50", "conf p99", "notif p99",
                "errors", "ratio", "max RSS MB (orders/inv/notif)")]
        for e in run["levels"]:
            lat, c = e["http"]["latency_ms"], e["completion"]
            rss = "/".join("{:.0f}".format(max((v.get("peak_rss_mb", 0) for k, v in e["processes"].items()
                                               if k.startswith(s + ".")), default=0))
                           for s in ("orders", "inventory", "notifications"))
            lines.append("{:<8} {:>8.1f} {:>8.1f} {:>7.1f} {:>7.1f} {:>7.1f} {:>9} {:>9} {:>9} {:>6} {:>6}  {}".format(
                e["level"], e["http"]["ok_per_s"], c["completed_per_s"], lat["p50"] or 0, lat["p95"] or 0,
                lat["p99"] or 0, c["accepted_to_confirmed_ms"]["p50"], c["accepted_to_confirmed_ms"]["p99"],
                c["accepted_to_notified_ms"]["p99"], e["http"]["error_count"],
                e.get("ratio_to_baseline_same_level", "-"), rss))
        lines.append("stock: on_hand {} reserved {} (orders completed {})".format(
            run["stock"]["on_hand"], run["stock"]["reserved"], run["orders_completed"]))
    return "\n".join(lines)


def chart(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))

    def plot(ax, entries, x_of, label, color, marker):
        for mode, ls in (("closed", "-"), ("open", "--")):
            points = [(x_of(e), e) for e in sorted(entries, key=lambda e: e["value"]) if e["mode"] == mode]
            if not points:
                continue
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1]["http"]["latency_ms"]["p99"] or 0 for p in points], ls, color=color,
                    marker=marker, label="{} {} p99".format(label, mode))
            ax.plot(xs, [p[1]["http"]["latency_ms"]["p50"] or 0 for p in points], ls, color=color,
                    marker=marker, alpha=0.4, label="{} {} p50".format(label, mode))

    plot(axes[0], report["baseline"], lambda e: e["http"]["ok_per_s"], "baseline", "black", "o")
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for run, color in zip(report["system"], colors):
        plot(axes[0], run["levels"], lambda e: e["http"]["ok_per_s"], "system {}x".format(run["instances"]),
             color, "s")
        for mode, ls in (("closed", "-"), ("open", "--")):
            points = [(e["completion"]["completed_per_s"], e)
                      for e in sorted(run["levels"], key=lambda e: e["value"]) if e["mode"] == mode]
            if points:
                axes[1].plot([p[0] for p in points],
                             [p[1]["completion"]["accepted_to_confirmed_ms"]["p99"] or 0 for p in points],
                             ls, color=color, marker="s", label="{}x {} confirmed p99".format(run["instances"], mode))
                axes[1].plot([p[0] for p in points],
                             [p[1]["completion"]["accepted_to_notified_ms"]["p99"] or 0 for p in points],
                             ls, color=color, marker="^", alpha=0.5,
                             label="{}x {} notified p99".format(run["instances"], mode))
    axes[0].set_title("HTTP latency vs throughput ({}, {})".format(report["db"], report["started_at"][:16]))
    axes[0].set_xlabel("successful requests / s")
    axes[0].set_ylabel("latency ms (log)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, alpha=0.3)
    axes[1].set_title("Order completion latency vs completed orders/s")
    axes[1].set_xlabel("completed orders / s (confirmed and notified)")
    axes[1].set_ylabel("accepted -> confirmed / notified, ms (log)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, alpha=0.3)
    # throughput per level: baseline requests/s against the system's accepted and completed orders/s
    names = [level_name(level) for level in
             sorted({(e["mode"], e["value"]) for e in report["baseline"]} |
                    {(e["mode"], e["value"]) for run in report["system"] for e in run["levels"]},
                    key=lambda mv: (mv[0] != "closed", mv[1]))
             for level in [{"mode": level[0], "value": level[1]}]]
    width = 0.8 / (1 + 2 * len(report["system"]))
    xs = range(len(names))
    base = {e["level"]: e["http"]["ok_per_s"] for e in report["baseline"]}
    axes[2].bar([x - 0.4 + width / 2 for x in xs], [base.get(n, 0) for n in names], width, color="black",
                label="baseline req/s")
    for i, (run, color) in enumerate(zip(report["system"], colors)):
        accepted = {e["level"]: e["http"]["ok_per_s"] for e in run["levels"]}
        completed = {e["level"]: e["completion"]["completed_per_s"] for e in run["levels"]}
        offset = -0.4 + width / 2 + width * (1 + 2 * i)
        axes[2].bar([x + offset for x in xs], [accepted.get(n, 0) for n in names], width, color=color,
                    alpha=0.45, label="system {}x accepted/s".format(run["instances"]))
        axes[2].bar([x + offset + width for x in xs], [completed.get(n, 0) for n in names], width,
                    color=color, label="system {}x completed/s".format(run["instances"]))
    axes[2].set_xticks(list(xs))
    axes[2].set_xticklabels(names)
    axes[2].set_title("Throughput per level (cN = N connections, rN = N offered/s)")
    axes[2].set_ylabel("per second")
    axes[2].legend(fontsize=7)
    axes[2].grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter levels (about 1-2 minutes)")
    parser.add_argument("--db", default="sqlite", type=_databases,
                        help="sqlite, postgresql, or both (sqlite,postgresql) against one baseline")
    parser.add_argument("--instances", default=None, help="processes per service to run, e.g. 1,2")
    parser.add_argument("--duration", type=float, default=None, help="seconds per level")
    parser.add_argument("--concurrency", default=None, help="closed-loop levels, e.g. 8,32,64")
    parser.add_argument("--rates", default=None, help="open-loop offered orders/s, e.g. 50,100,200,400")
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="record py-spy flamegraphs of the services")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--log-level", default=None,
                        help="LOG_LEVEL and TRACE_LEVEL for the services (default: config.yaml's, INFO)")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"instances": "1", "duration": 5.0, "concurrency": "32", "rates": "100,200"}
    else:
        defaults = {"instances": "1,2", "duration": 10.0, "concurrency": "8,32,64", "rates": "50,100,200,400"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = tempfile.mkdtemp(prefix="bench-")
    report = {"started_at": datetime.now(timezone.utc).isoformat(), "db": args.db, "label": args.label,
              "log_level": args.log_level or "INFO (config.yaml)",
              "duration_s": args.duration, "quick": args.quick, "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg()}
    started = time.monotonic()
    try:
        say("==> baseline")
        report["baseline"] = [] if args.skip_baseline else run_baseline(args, work)
        report["system"] = []
        for db in args.db.split(","):  # several databases share one baseline: compare them in one run
            for instances in [int(n) for n in args.instances.split(",")]:
                say("==> system on {}, {} process(es) per service".format(db, instances))
                try:
                    report["system"].append(run_system(args, work, instances, db))
                except Exception as exc:  # keep the figures of the phases that worked
                    say("system phase on {} with {} process(es) per service failed: {}".format(db, instances, exc))
                    report.setdefault("failed", []).append(
                        {"db": db, "instances": instances, "error": "{}: {}".format(type(exc).__name__, exc)[:2000]})
        if not args.skip_baseline:
            say("==> baseline again")
            report["baseline_after"] = run_baseline(args, work)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            say("work directory kept: " + work)
    report["wall_s"] = round(time.monotonic() - started, 1)
    summary(report)
    json_path = os.path.join(OUT_DIR, "bench-{}.json".format(stamp))
    with open(json_path, "w") as stream:
        json.dump(report, stream, indent=1, default=str)
    shutil.copyfile(json_path, os.path.join(OUT_DIR, "latest.json"))
    png_path = os.path.join(OUT_DIR, "bench-{}.png".format(stamp))
    chart(report, png_path)
    print(table(report))
    for failure in report.get("failed", []):
        print("\nsystem with {} process(es) per service FAILED: {}".format(
            failure["instances"], failure["error"][:300]))
    print("\nwritten: {}\n         {}\n(total {:.0f} s)".format(json_path, png_path, report["wall_s"]))


def _databases(value):
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or not set(names) <= {"sqlite", "postgresql"}:
        raise argparse.ArgumentTypeError("sqlite, postgresql or sqlite,postgresql")
    return ",".join(names)


if __name__ == "__main__":
    main()
