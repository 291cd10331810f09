"""The one way tests wait for an asynchronous system: poll a condition until it holds."""
import time


class GiveUp(AssertionError):
    """Raised by a check when waiting longer cannot help (say, the process it waits on exited)."""


def eventually(check, timeout=15.0, interval=0.1, message="condition"):
    """Call ``check`` until it returns something truthy, and return that; fail after ``timeout``.

    An exception from ``check`` counts as "not yet" (not up, not consistent
    yet), except ``GiveUp``, which fails at once. ``message`` may be a
    callable, for a description read only on failure (say, a log tail).
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
        except GiveUp:
            raise
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    described = message() if callable(message) else message
    raise AssertionError("timed out after {}s waiting for {}; last: {!r}".format(timeout, described, last))
