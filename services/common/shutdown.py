"""A deadline on graceful shutdown.

On SIGTERM ``nameko run`` (2.14) stops each container gracefully: entrypoints
stop first (consumers are cancelled, so no new message is taken and the
prefetched ones go back to the queue when the channel closes), then it waits
for the running workers to finish and ack, then dependencies stop (the
outbox publishes what committed workers left), then the process exits. What
it does not have is a limit: one stuck worker keeps the process alive
forever, which an orchestrator answers with SIGKILL at a moment of its own
choosing.

``GracefulShutdown`` adds the limit. When SIGTERM arrives it starts a timer;
if the container has not stopped after ``SHUTDOWN_TIMEOUT`` seconds it is
killed (the unfinished workers' messages were never acked, so RabbitMQ
delivers them again), and if even that does not end the process it exits.
A second SIGTERM skips the wait.
"""
import logging
import os
import signal
import weakref

import eventlet
from nameko.extensions import DependencyProvider

from services.common.settings import PlatformSettings

log = logging.getLogger(__name__)

KILL_GRACE = 5  # seconds a kill may take before the process just exits

# One SIGTERM handler per process, in front of ``nameko run``'s own; it tells
# every running GracefulShutdown. It holds no reference to any container, so
# containers of other runners (tests) come and go without being kept alive.
_running = weakref.WeakSet()
_nameko_handler = None
_signals_seen = 0


def _on_sigterm(signum, frame):
    # runs in the hub's main loop: only spawn here, never block or wait
    global _signals_seen
    _signals_seen += 1
    for provider in list(_running):
        provider.terminating(again=_signals_seen > 1)
    if _signals_seen == 1 and _nameko_handler is not None:
        _nameko_handler(signum, frame)  # nameko run's: stop the runner gracefully


def _install():
    """Put ``_on_sigterm`` in front of ``nameko run``'s handler; False elsewhere."""
    global _nameko_handler
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm:
            return True
        if getattr(current, "__module__", None) != "nameko.cli.run":
            return False  # not under `nameko run` (tests, other runners): leave signals alone
        _nameko_handler = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        return True
    except ValueError:  # not the main thread
        return False


class GracefulShutdown(DependencyProvider):
    def __init__(self):
        self._timer = None
        self._terminating = False

    def setup(self):
        self.timeout = PlatformSettings.from_config(self.container.config).shutdown_timeout

    def start(self):
        if _install():
            _running.add(self)

    def stop(self):
        _running.discard(self)

    def kill(self):
        _running.discard(self)
        if self._timer is not None:
            self._timer.kill()

    def terminating(self, again=False):
        if again or self._terminating:
            log.warning("second SIGTERM: killing %s now", self.container.service_name)
            eventlet.spawn_n(self._kill_now)
            return
        self._terminating = True
        log.info("SIGTERM: stopping %s; running workers have %ss to finish",
                 self.container.service_name, self.timeout)
        self._timer = eventlet.spawn(self._deadline)

    def _deadline(self):
        eventlet.sleep(self.timeout)
        if self._stopped():
            return
        log.warning("%s still busy %ss after SIGTERM; killing its workers (their messages "
                    "return to the broker)", self.container.service_name, self.timeout)
        self._kill_now()

    def _kill_now(self):
        container = self.container
        eventlet.spawn_n(container.kill)
        eventlet.sleep(KILL_GRACE)
        if not container._died.ready():
            log.error("%s did not die within %ss of being killed; exiting",
                      container.service_name, KILL_GRACE)
            logging.shutdown()
            os._exit(1)

    def _stopped(self):
        return self.container._died.ready()
