"""RPC calls that give up.

Nameko 2's ``RpcProxy`` waits for a reply forever, so a service that is down
would hang every caller. ``TimedRpcProxy`` waits ``RPC_TIMEOUT`` seconds and
then raises ``ServiceUnavailable``; the request message carries the same
expiry, so a service that comes back later does not work through a backlog of
questions nobody is waiting for any more.
"""
import eventlet
from nameko.exceptions import UnknownService
from nameko.rpc import RpcProxy

from .errors import ServiceUnavailable


class TimedServiceProxy:
    def __init__(self, proxy, service_name, timeout):
        self._proxy = proxy
        self._service_name = service_name
        self._timeout = timeout

    def __getattr__(self, method_name):
        method = getattr(self._proxy, method_name)

        def call(*args, **kwargs):
            try:
                reply = method.call_async(*args, **kwargs)
                with eventlet.Timeout(self._timeout):
                    return reply.result()
            except (eventlet.Timeout, UnknownService, ConnectionError, OSError) as exc:
                raise ServiceUnavailable(
                    "The {} service did not answer.".format(self._service_name),
                    details={"service": self._service_name, "method": method_name,
                             "reason": type(exc).__name__},
                ) from None

        call.__name__ = method_name
        return call


class TimedRpcProxy(RpcProxy):
    def __init__(self, target_service, timeout=None, **options):
        super().__init__(target_service, **options)
        self.timeout = timeout

    def setup(self):
        super().setup()
        if self.timeout is None:
            self.timeout = float(self.container.config.get("RPC_TIMEOUT", 5))
        # an unanswered request expires with its caller's patience
        self.options.setdefault("expiration", self.timeout)
        self.options.setdefault("retry_policy", {"max_retries": 1})

    def get_dependency(self, worker_ctx):
        return TimedServiceProxy(super().get_dependency(worker_ctx), self.target_service, self.timeout)
