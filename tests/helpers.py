"""Small helpers for tests that wait on an asynchronous system."""
import time

from scripts.throwaway import free_port  # noqa: F401  (tests import it from here)


def eventually(check, timeout=15.0, interval=0.1, message="condition"):
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not up yet, not consistent yet: try again
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError("timed out after {}s waiting for {}; last: {!r}".format(timeout, message, last))


def service_worker(service_class, **dependencies):
    """``worker_factory(service_class, **dependencies)`` with a real unit of work.

    The unit of work uses the worker's own (real or replaced) ``db`` and
    ``outbox``, so it is built on the worker rather than mocked; a service's
    settings are read from the ``config`` given.
    """
    from nameko.testing.services import worker_factory
    worker = worker_factory(service_class, **dependencies)
    worker.uow = service_class.uow.for_service(worker)
    settings = getattr(service_class, "settings", None)
    if hasattr(settings, "for_config"):  # settings read from the config the test gives
        worker.settings = settings.for_config(dependencies.get("config") or {})
    return worker
