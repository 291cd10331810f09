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

import eventlet
from nameko.extensions import DependencyProvider

log = logging.getLogger(__name__)

TIMEOUT_KEY = "SHUTDOWN_TIMEOUT"
DEFAULT_TIMEOUT = 20
KILL_GRACE = 5  # seconds a kill may take before the process just exits


class GracefulShutdown(DependencyProvider):
    def __init__(self):
        self._previous = None
        self._handler = None
        self._timer = None
        self._terminating = False

    def setup(self):
        self.timeout = float(self.container.config.get(TIMEOUT_KEY, DEFAULT_TIMEOUT))

    def start(self):
        try:
            self._previous = signal.getsignal(signal.SIGTERM)
            self._handler = self._on_sigterm
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (some test runners): no signals here
            self._handler = None

    def stop(self):
        if self._timer is not None and not self._terminating:
            self._timer.kill()
        self._restore()

    def kill(self):
        self._restore()

    def _restore(self):
        if self._handler is not None and signal.getsignal(signal.SIGTERM) == self._handler:
            signal.signal(signal.SIGTERM, self._previous)
        self._handler = None

    def _on_sigterm(self, signum, frame):
        # runs in the hub's main loop: only spawn here, never block or wait
        if self._terminating:
            log.warning("second SIGTERM: killing %s now", self.container.service_name)
            eventlet.spawn_n(self._kill_now)
            return
        self._terminating = True
        log.info("SIGTERM: stopping %s; running workers have %ss to finish",
                 self.container.service_name, self.timeout)
        self._timer = eventlet.spawn(self._deadline)
        if callable(self._previous):
            self._previous(signum, frame)  # nameko run's handler: stop the runner
        else:
            eventlet.spawn_n(self.container.stop)

    def _deadline(self):
        eventlet.sleep(self.timeout)
        if self._stopped():
            return
        log.warning("%s still busy %ss after SIGTERM; killing its workers (their messages "
                    "return to the broker)", self.container.service_name, self.timeout)
        self._kill_now()

    def _kill_now(self):
        eventlet.spawn_n(self.container.kill)
        eventlet.sleep(KILL_GRACE)
        if not self._stopped():
            log.error("%s did not die within %ss of being killed; exiting",
                      self.container.service_name, KILL_GRACE)
            logging.shutdown()
            os._exit(1)

    def _stopped(self):
        return self.container._died.ready()
