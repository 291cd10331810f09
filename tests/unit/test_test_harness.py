"""The test harness's own guarantees: a busy broker fails a test, it never hangs the run."""
import pytest

from tests.support import vhosts
from tests.support.vhosts import VhostPipeline


class FlakyManager:
    """A management API whose first ``failures`` calls to create a vhost fail, as a busy broker's do."""

    def __init__(self, failures):
        self.failures = failures
        self.created, self.deleted = [], []

    def create_vhost(self, vhost):
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("the management API reset the connection")
        self.created.append(vhost)

    def set_vhost_permissions(self, vhost, username, *permissions):
        pass

    def delete_vhost(self, vhost):
        self.deleted.append(vhost)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(vhosts, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(vhosts, "VHOST_WAIT", 1)


@pytest.mark.timeout(30)
def test_vhosts_keep_coming_after_the_management_api_failed():
    manager = FlakyManager(failures=5)
    with VhostPipeline(manager, "guest", size=2).run() as pipeline:
        for _ in range(4):  # more than the pipeline makes ahead
            with pipeline.get() as vhost:
                assert vhost in manager.created
    assert set(manager.deleted) >= set(manager.created[:4])


@pytest.mark.timeout(30)
def test_a_test_that_gets_no_vhost_fails_with_the_error_instead_of_waiting_for_ever():
    manager = FlakyManager(failures=10 ** 9)
    pipeline = VhostPipeline(manager, "guest")
    pipeline._start()
    try:
        with pytest.raises(RuntimeError, match="reset the connection"):
            with pipeline.get():
                pass
    finally:
        pipeline.running = False
        manager.failures = 0  # let the creating thread finish
        pipeline._shutdown()


def test_the_timeout_dump_shows_what_each_greenlet_waits_on_and_skips_dead_weak_proxies():
    import weakref

    import eventlet

    from tests.support.hangs import dump_greenlets

    class Terminal:
        def __init__(self):
            self.text = []

        def sep(self, char, title):
            self.text.append(title)

        def write(self, text):
            self.text.append(text)

    class Gone:
        pass

    def waiting_for_the_broker(event):
        event.wait()

    event = eventlet.event.Event()
    waiter = eventlet.spawn(waiting_for_the_broker, event)
    eventlet.sleep(0)
    dead = weakref.proxy(Gone())  # its referent is gone; gc still lists the proxy
    terminal = Terminal()
    try:
        dump_greenlets(terminal)
    finally:
        event.send()
        waiter.wait()
    assert dead is not None
    assert "waiting_for_the_broker" in "".join(terminal.text)
