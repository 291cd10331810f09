"""What one process opens on PostgreSQL, counted by the server, against the budget in docs/operations.md.

Every process opens one pool per database, shared by all its providers, and
names itself in ``application_name``; ``pg_stat_activity`` shows each
service's connections. Under a load that keeps every worker busy, no
process may hold more than its budget, and none may open more than its
budget in total either (a pool smaller than the worker count closes and
reopens connections: churn).
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests

from tests.conftest import PG_ADMIN_DSN
from tests.support import eventually, tokens
from tests.support.faults import make_system

# HTTP slots well above the event workers: with events handled in batches, orders'
# event workers seldom hold all their connections at once, and the run must show
# HTTP taking connections beside them (the last assertion)
MAX_WORKERS, HTTP_MAX_CONCURRENCY, NOTIFY_CONCURRENCY = 3, 6, 3
OPS_SLOTS = 4  # HttpLimits.OPS_CONCURRENCY: /health, /ready, /metrics, /openapi.json
OUTBOX, METRICS = 2, 1
DB_POOL_SIZE = 8  # config.yaml's default
CLIENTS = 24


def documented_budget(service):
    """docs/operations.md, "Connection budget": connections one process may open on its database."""
    wanted = MAX_WORKERS + OUTBOX + METRICS
    if service == "orders":
        wanted += HTTP_MAX_CONCURRENCY + OPS_SLOTS
    if service == "notifications":
        wanted += NOTIFY_CONCURRENCY + 2
    return min(wanted, DB_POOL_SIZE)


class ConnectionSampler:
    """Polls pg_stat_activity: the peak count and every backend pid seen, per application_name."""

    def __init__(self, databases, names):
        self.databases, self.names = list(databases), list(names)
        self.peak = dict.fromkeys(self.names, 0)
        self.pids = {name: set() for name in self.names}
        self._stop = threading.Event()

    def sample(self, connection):
        with connection.cursor() as cursor:
            cursor.execute("SELECT application_name, pid FROM pg_stat_activity "
                           "WHERE datname = ANY(%s) AND application_name = ANY(%s)",
                           (self.databases, self.names))
            rows = cursor.fetchall()
        counts = dict.fromkeys(self.names, 0)
        for name, pid in rows:
            counts[name] += 1
            self.pids[name].add(pid)
        for name, count in counts.items():
            self.peak[name] = max(self.peak[name], count)

    def run(self):
        connection = psycopg2.connect(PG_ADMIN_DSN)
        connection.autocommit = True
        try:
            while not self._stop.is_set():
                self.sample(connection)
                time.sleep(0.05)
        finally:
            connection.close()

    def stop(self):
        self._stop.set()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_each_process_stays_within_its_documented_connection_budget_under_load(service_config, tmp_path):
    system = make_system(service_config, tmp_path, MAX_WORKERS=MAX_WORKERS,
                         HTTP_MAX_CONCURRENCY=HTTP_MAX_CONCURRENCY, HTTP_QUEUE_TIMEOUT=10,
                         NOTIFY_CONCURRENCY=NOTIFY_CONCURRENCY, ORDER_RATE_LIMIT=0)
    databases = [uri.rsplit("/", 1)[1] for uri in service_config["DB_URIS"].values()]
    services = ["orders", "inventory", "notifications"]
    sampler = ConnectionSampler(databases, services)
    clients = threading.local()

    def place(n):
        # keep-alive connections, as a load balancer would hold them
        if not hasattr(clients, "session"):
            clients.session = requests.Session()
        email = "pool{}@example.com".format(n % 50)
        return clients.session.post(system.url("/orders"), json={
            "customer_email": email, "lines": [{"sku": "POOL-1", "quantity": 1}]},
            headers=tokens.customer(email), timeout=30)

    try:
        system.start()
        system.create_products(("POOL-1", "Pool noodle", 300, 100000))
        with ThreadPoolExecutor(max_workers=1) as background:
            sampling = background.submit(sampler.run)
            try:
                with ThreadPoolExecutor(max_workers=CLIENTS) as pool:  # more clients than HTTP slots
                    responses = list(pool.map(place, range(400)))
                assert [r.status_code for r in responses] == [202] * len(responses), \
                    [r.text for r in responses if r.status_code != 202][:3]
                last = responses[-1].json()["id"]
                eventually(lambda: system.order(last)["status"] == "confirmed", timeout=60, message="confirmed")
            finally:
                sampler.stop()
                sampling.result(timeout=10)
    finally:
        system.stop_all()

    print('connections: peak', sampler.peak, 'backends seen', {k: len(v) for k, v in sampler.pids.items()})
    for service in services:
        budget = documented_budget(service)
        assert 0 < sampler.peak[service] <= budget, (service, sampler.peak, budget)
        # no churn: a connection closed and reopened is a new backend, and all
        # the backends of the whole run fit in the budget
        assert len(sampler.pids[service]) <= budget, (service, sampler.pids, budget)
    # the load kept orders' HTTP slots busy: more connections than its event workers alone could use
    assert sampler.peak["orders"] > MAX_WORKERS + OUTBOX + METRICS, sampler.peak
