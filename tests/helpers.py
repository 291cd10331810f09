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
