"""Prometheus metrics for a service, through prometheus_client.

``Metrics`` is a dependency provider. It counts and times every entrypoint
call (``worker_setup`` / ``worker_result``, labelled by entrypoint, kind and
outcome) and, when scraped, reads the state that outlives a process from
where it is kept: counts by status from the service's own tables, the
outbox backlog and its oldest row's age, and the depth of the service's
dead-letter queue in RabbitMQ. Reading state at scrape time (rather than
counting changes in memory) keeps those figures right across restarts and
across several processes of one service.

Each container gets its own registry, so several services in one process
(tests) do not collide. The exposition is served by any service whose ``METRICS_PORTS`` entry is a
port, on that port (never on orders' public API port), together with
``/health`` and ``/ready`` (``health.py``) for services that have no API
port of their own.
"""
import logging
import time
from weakref import WeakKeyDictionary

import eventlet
import eventlet.wsgi
from amqp.exceptions import NotFound
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
    generate_latest, make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from services.common.messaging.brokers import ssl_options
from services.common.messaging.consumers import dead_letter_queue_name
from services.common.db.database import read_only, shared_engine
from services.common.messaging.events import as_utc, utcnow
from services.common.observability.health import check_broker, check_database, json_wsgi, readiness
from services.common.observability.tracing import entrypoint_kind
from services.common.settings import PlatformSettings

log = logging.getLogger(__name__)

PORTS_KEY = "METRICS_PORTS"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SUCCESS, EXPECTED_ERROR, ERROR = "success", "expected_error", "error"


class ServiceMetrics:
    """What a worker sees as ``self.metrics``."""

    def __init__(self, provider):
        self._provider = provider

    def exposition(self):
        return generate_latest(self._provider.registry)

    def response(self):
        return Response(self.exposition(), status=200, content_type=CONTENT_TYPE_LATEST)


class Metrics(DependencyProvider):
    """Entrypoint calls and latencies, plus state counted at scrape time.

    ``counts`` is a list of ``(metric name, help, column)``: at each scrape
    the rows of the column's table are counted by that column's value (e.g.
    orders by status). ``outbox`` is the service's outbox model, if it has
    one.
    """

    def __init__(self, declarative_base=None, counts=(), outbox=None):
        self.declarative_base = declarative_base
        self.counts = list(counts)
        self.outbox = outbox
        self.starts = WeakKeyDictionary()
        self.registry = None
        self.shared = None
        self._server = None
        self._socket = None

    # lifecycle ---------------------------------------------------------------------

    def setup(self):
        service = self.container.service_name
        config = self.container.config
        self.registry = CollectorRegistry()
        labels = ("service", "entrypoint", "kind", "outcome")
        self.calls = Counter("nameko_entrypoint_calls", "Entrypoint calls that finished, by outcome.",
                             labels, registry=self.registry)
        self.messages = Counter("nameko_entrypoint_messages", "Messages event entrypoints finished, by outcome; "
                                "a batch counts each of its messages (those of a failed batch again when "
                                "each is then handled alone).", labels, registry=self.registry)
        self.latency = Histogram("nameko_entrypoint_duration_seconds",
                                 "Time from worker start to result, by entrypoint and outcome.",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("nameko_workers_in_flight", "Workers running now.", ("service",),
                               registry=self.registry)
        # prometheus_client checks and hashes the label values on every .labels()
        self._in_flight = self.in_flight.labels(service)
        self._labelled = {}
        ProcessCollector(registry=self.registry)
        self.registry.register(_StateCollector(self))
        if self.declarative_base is not None:
            # a scrape or a /ready at a time, usually; the pool's overflow covers both at once
            self.shared = shared_engine(self.container, self.declarative_base.__name__, 1)
        self.amqp_uri = config[AMQP_URI_CONFIG_KEY]
        self.ssl = ssl_options(config)
        self.port = int((config.get(PORTS_KEY) or {}).get(service) or 0)

    def start(self):
        if self.port:
            self._serve(self.port)

    def stop(self):
        if self._server is not None:
            self._server.kill()
            self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.shared is not None:
            self.shared.release()

    kill = stop

    @property
    def engine(self):
        return self.shared.engine if self.shared is not None else None

    def _serve(self, port):
        try:
            # no SO_REUSEPORT: a second process on the port must not share it silently
            self._socket = eventlet.listen(("0.0.0.0", port), reuse_port=False)
        except OSError as exc:
            log.warning("metrics: cannot listen on port %s (%s); not served on a port", port, exc)
            return
        app = self._wsgi_app(make_wsgi_app(self.registry))
        self._server = self.container.spawn_managed_thread(
            lambda: eventlet.wsgi.server(self._socket, app, log_output=False))
        log.info("metrics: serving Prometheus metrics, /health and /ready on port %s", port)

    def _wsgi_app(self, metrics_app):
        """``/health`` and ``/ready`` (broker and own database), everything else to prometheus_client."""
        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/health":
                return json_wsgi(200, {"status": "ok", "service": self.container.service_name}, start_response)
            if path == "/ready":
                timeout = PlatformSettings.from_config(self.container.config).ready_timeout
                checks = {"broker": check_broker(self.amqp_uri, timeout, self.ssl)}
                if self.engine is not None:
                    checks["database"] = check_database(self.engine.connect, timeout)
                status, body = readiness(checks)
                return json_wsgi(status, dict(body, service=self.container.service_name), start_response)
            return metrics_app(environ, start_response)
        return app

    # workers -------------------------------------------------------------------------

    def get_dependency(self, worker_ctx):
        return ServiceMetrics(self)

    def worker_setup(self, worker_ctx):
        self.starts[worker_ctx] = time.perf_counter()
        self._in_flight.inc()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        started = self.starts.pop(worker_ctx, None)
        self._in_flight.dec()
        entrypoint = worker_ctx.entrypoint
        if exc_info is None:
            outcome = SUCCESS
        elif isinstance(exc_info[1], getattr(entrypoint, "expected_exceptions", ()) or ()):
            outcome = EXPECTED_ERROR
        else:
            outcome = ERROR
        calls, latency, messages = self._children(entrypoint, outcome)
        calls.inc()
        if messages is not None:
            batch = worker_ctx.kwargs.get("batch")
            messages.inc(1 if batch is None else len(batch))
        if started is not None:
            latency.observe(time.perf_counter() - started)

    def _children(self, entrypoint, outcome):
        """The labelled counter and histogram of one entrypoint and outcome, and for an event entrypoint
        its message counter, looked up once."""
        key = (entrypoint.method_name, type(entrypoint), outcome)
        children = self._labelled.get(key)
        if children is None:
            kind = entrypoint_kind(type(entrypoint).__name__)
            labels = (self.container.service_name, entrypoint.method_name, kind, outcome)
            children = self._labelled[key] = (self.calls.labels(*labels), self.latency.labels(*labels),
                                              self.messages.labels(*labels) if kind == "event" else None)
        return children

    # state read at scrape time -------------------------------------------------------

    def collect_state(self):
        service = self.container.service_name
        if self.engine is not None:
            try:
                yield from self._database_state(service)
            except Exception as exc:
                log.warning("metrics: reading %s's database failed: %s", service, exc)
        try:
            yield self._dead_letters(service)
        except Exception as exc:
            log.warning("metrics: reading %s's dead-letter queue failed: %s", service, exc)

    def _database_state(self, service):
        families = []
        with read_only(self.engine.connect()) as connection:
            for name, documentation, column in self.counts:
                family = GaugeMetricFamily(name, documentation, labels=["service", column.key])
                rows = connection.execute(select(column, func.count()).group_by(column)).all()
                for value, count in rows:
                    family.add_metric([service, str(value)], count)
                families.append(family)
            if self.outbox is not None:
                waiting, oldest = connection.execute(
                    select(func.count(), func.min(self.outbox.created_at))
                    .where(self.outbox.published_at.is_(None))).one()
                age = 0.0
                if oldest is not None:
                    age = max(0.0, (utcnow() - as_utc(oldest)).total_seconds())
                families.append(GaugeMetricFamily(
                    "outbox_waiting", "Outbox rows committed but not yet published.",
                    labels=["service"]))
                families[-1].add_metric([service], waiting)
                families.append(GaugeMetricFamily(
                    "outbox_oldest_waiting_age_seconds", "Age of the oldest unpublished outbox row.",
                    labels=["service"]))
                families[-1].add_metric([service], age)
                families.append(self._unroutable(connection, service))
        return families

    def _unroutable(self, connection, service):
        """Unsent outbox rows of the event types this process found reaching no queue."""
        family = GaugeMetricFamily(
            "outbox_unroutable_events",
            "Unpublished outbox rows whose event type reached no queue on its last try (kept, retried).",
            labels=["service", "event_type"])
        provider = next((extension for extension in self.container.dependencies
                         if hasattr(extension, "unroutable_types")), None)
        types = sorted(provider.unroutable_types()) if provider is not None else []
        if types:
            rows = connection.execute(
                select(self.outbox.event_type, func.count())
                .where(self.outbox.published_at.is_(None), self.outbox.event_type.in_(types))
                .group_by(self.outbox.event_type)).all()
            for event_type, count in rows:
                family.add_metric([service, event_type], count)
        return family

    def _dead_letters(self, service):
        queue_name = dead_letter_queue_name(service)
        with Connection(self.amqp_uri, connect_timeout=2, ssl=ssl_options({"AMQP_SSL": self.ssl}),
                        transport_options={"max_retries": 1}) as connection:
            channel = connection.channel()
            try:
                # passive: only look; declaring with other arguments than the
                # consumers use would break their own declaration
                waiting = channel.queue_declare(queue=queue_name, passive=True).message_count
            except NotFound:  # no message was ever dead-lettered here
                waiting = 0
            finally:
                try:
                    channel.close()
                except Exception:
                    pass  # a failed passive declare already closed it
        family = GaugeMetricFamily("dead_letters_waiting",
                                   "Messages in the service's dead-letter queue.",
                                   labels=["service", "queue"])
        family.add_metric([service, queue_name], waiting)
        return family


class _StateCollector:
    def __init__(self, provider):
        self.provider = provider

    def describe(self):
        return []  # names are only known at scrape time; never collect at registration

    def collect(self):
        return self.provider.collect_state()
