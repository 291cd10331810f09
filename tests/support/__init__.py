"""What tests of every tier share: running systems, brokers, proxies, fakes, and waiting.

- ``waiting``: ``eventually``, the one way to wait for a condition.
- ``workers``: ``service_worker``, a unit-test worker with a real unit of work; ``http_routes``.
- ``tokens``: bearer tokens and the settings that make the services trust them.
- ``system``: the three services as real ``nameko run`` processes.
- ``faults``: the fault tests' order stream, database checks and ``FaultRun``.
- ``broker`` / ``cluster``: private RabbitMQ nodes, alone or as a cluster.
- ``proxy``: a TCP proxy a test can cut, to stage a broker or database outage.
- ``notifications_fakes``: SMTP and webhook sinks standing in for providers.
- ``telemetry_spans``: an in-memory span exporter.
- ``sqlite_race``: a second process racing on one SQLite file.
- ``fixtures``: the pytest fixtures over these, loaded by the root conftest.

The lightest helpers are importable from the package itself. It imports
nothing heavy: child processes run modules of it (``python -m
tests.support.notifications_fakes``) and should start in a blink.
"""
from tests.support.waiting import GiveUp, eventually  # noqa: F401
from tests.support.workers import http_routes, service_worker  # noqa: F401


def free_port():
    """A TCP port free on loopback now (scripts.throwaway's, imported only when called)."""
    from scripts.throwaway import free_port as free

    return free()
