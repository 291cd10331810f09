"""The shared broker's vhosts for tests: made ahead in the background, deleted after use, never a hang.

nameko's pytest plugin makes them through ``ResourcePipeline``, whose
creating green thread dies on the first error of the management API (a 5xx
while the broker is busy, a reset connection) and is never restarted; every
test after the vhosts made ahead then waits for one for ever, and the whole
run ends in pytest-timeout's exit. Its management client also sends requests
with no timeout. Here a failed call is retried, every request has a
timeout, and a test that still gets no vhost fails with the last error.
"""
import logging
import random
import string
from collections.abc import Sequence
from contextlib import contextmanager

import eventlet
from eventlet.queue import Empty
from kombu.pools import connections
from nameko.testing.rabbit import Client
from nameko.testing.utils import ResourcePipeline

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30  # seconds for one call to the management API
RETRY_DELAY = 1  # seconds between attempts of a failed call
VHOST_WAIT = 120  # seconds a test waits for a vhost before it fails


class ManagementClient(Client):
    """nameko's management API client, with a timeout on every request.

    ``Client`` passes its keyword arguments to ``requests`` from ``_request``
    (a private method: the client has no public way to set a timeout).
    """

    def _request(self, method, *args, **kwargs):
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return super()._request(method, *args, **kwargs)


def retried(what, call, attempts=None, give_up=lambda: False):
    """``call()``, again after ``RETRY_DELAY`` while it raises: ``attempts`` times, or until ``give_up()``."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if (attempts is not None and attempt >= attempts) or give_up():
                raise
            log.warning("%s failed (attempt %d): %s: %s", what, attempt, type(exc).__name__, exc)
            eventlet.sleep(RETRY_DELAY)


class VhostPipeline(ResourcePipeline):
    """nameko's pipeline of vhosts whose threads outlive an error, and whose ``get`` gives up."""

    def __init__(self, manager, username, size=3):
        super().__init__(self._make, self._delete, size=size)
        self.manager = manager
        self.username = username
        self.last_error = None

    def _make(self):
        vhost = "nameko_test_" + "".join(random.choice(string.ascii_lowercase) for _ in range(10))

        def make():
            try:
                self.manager.create_vhost(vhost)  # a PUT: made again, it is still one vhost
                self.manager.set_vhost_permissions(vhost, self.username, ".*", ".*", ".*")
            except Exception as exc:
                self.last_error = exc
                raise
        retried("creating vhost " + vhost, make, give_up=lambda: not self.running)  # the session ends
        return vhost

    def _delete(self, vhost):
        try:
            retried("deleting vhost " + vhost, lambda: self.manager.delete_vhost(vhost), attempts=10)
        except Exception:  # left behind; the next tests need the thread more than it
            log.exception("vhost %s not deleted", vhost)
        for key, pool in list(connections.items()):  # its pooled connections are dead now
            if isinstance(key, Sequence) and len(key) > 4 and key[4] == vhost:  # kombu's HashedSeq
                pool.force_close_all()

    @contextmanager
    def get(self):
        try:
            vhost = self.ready.get(timeout=VHOST_WAIT)
        except Empty:
            raise RuntimeError("no vhost made within {} s; the management API's last error: {!r}".format(
                VHOST_WAIT, self.last_error)) from None
        try:
            yield vhost
        finally:
            self.trash.put(vhost)
