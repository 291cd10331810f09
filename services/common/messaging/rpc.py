"""RPC that gives up, and survives the broker going away.

Nameko 2's ``RpcProxy`` waits for a reply forever, so a service that is down
would hang every caller. ``TimedRpcProxy`` waits ``RPC_TIMEOUT`` seconds and
then raises ``ServiceUnavailable``; the request message carries the same
expiry, so a service that comes back later does not work through a backlog of
questions nobody is waiting for any more. The reply it gave up on is
forgotten (nameko keeps it until an answer that may never come).

``rpc`` is nameko's entrypoint, and ``TimedRpcProxy`` its proxy, consuming
through ``SafeAckQueueConsumer``: with nameko's own consumer, an ack that
meets a connection the broker has just reset kills the whole service.
"""
import amqp.exceptions
import eventlet
from nameko.exceptions import UnknownService
from nameko.rpc import RPC_QUEUE_TEMPLATE, ReplyListener, RpcConsumer, RpcProxy, get_rpc_exchange
from nameko.rpc import Rpc as NamekoRpc

from services.common.messaging.consumers import SafeAckQueueConsumer, durable_queue, safe_context_data
from services.common.errors import Forbidden, InternalError, ServiceError, ServiceUnavailable, is_unavailable
from services.common.settings import PlatformSettings


class SafeAckRpcConsumer(RpcConsumer):
    """The ``rpc-<service>`` queue, declared with the arguments of every consumed queue.

    nameko 2.14.1 declares it durable (and not auto-delete), so it can be a
    quorum queue: in a cluster, a classic one would live on one node, and
    while that node is down the declaration fails on every reconnection,
    which stops the service's whole consumer (RPC replies included), not
    only its RPC entrypoints. Requests still expire with their caller's
    timeout (per-message TTL, which quorum queues honour since 3.10).
    """

    queue_consumer = SafeAckQueueConsumer()

    def setup(self):
        # nameko's RpcConsumer.setup, with the queue's arguments from the one helper
        # every durable queue is declared through
        if self.queue is None:
            config = self.container.config
            service_name = self.container.service_name
            self.queue = durable_queue(config, RPC_QUEUE_TEMPLATE.format(service_name),
                                       exchange=get_rpc_exchange(config), routing_key="{}.*".format(service_name))
            self.queue_consumer.register_provider(self)
            self._registered = True


class Rpc(NamekoRpc):
    rpc_consumer = SafeAckRpcConsumer()

    def unpack_message_headers(self, message):
        # a forged nameko.call_id_stack would otherwise kill the service
        return safe_context_data(super().unpack_message_headers(message))

    def handle_result(self, message, worker_ctx, result, exc_info):
        """Reply with a typed error only: no SQL or driver text reaches a caller.

        A ``ServiceError`` is the method's answer and goes as it is. Anything
        else is a failure the method did not expect (logged with its
        traceback by nameko's container): the caller gets
        ``ServiceUnavailable`` for a database that is down or busy, and
        ``InternalError`` naming only the exception's type otherwise.
        ``handle_result`` is nameko's own hook for the reply; there is no
        public one for rewriting an error.
        """
        if exc_info is not None and not isinstance(exc_info[1], ServiceError):
            exc = exc_info[1]
            if is_unavailable(exc):
                replacement = ServiceUnavailable(
                    "The {} service's database is unavailable; try again shortly.".format(
                        self.container.service_name), details={"reason": type(exc).__name__})
            else:
                replacement = InternalError(
                    "The {} service failed: {}.".format(self.container.service_name, type(exc).__name__),
                    details={"reason": type(exc).__name__})
            exc_info = (type(replacement), replacement, exc_info[2])
        return super().handle_result(message, worker_ctx, result, exc_info)


rpc = Rpc.decorator


class SafeAckReplyListener(ReplyListener):
    """nameko's reply listener, with a transient reply queue.

    nameko 2.14.1 leaves its reply queue durable (kombu's default). In a
    cluster, a durable classic queue whose node is down cannot be declared
    again (``NOT_FOUND - home node ... is down``), so the reconnected
    consumer, which shares its connection with the service's RPC entrypoint,
    would fail until that node returns. A transient queue is deleted with
    its node and declared afresh on the node the process reconnected to; a
    reply in flight is lost either way, and its caller times out (503).
    It is not exclusive: on a reconnection the broker may not yet have
    noticed the old connection's end, and an exclusive queue would then be
    locked to it.
    """

    queue_consumer = SafeAckQueueConsumer()

    def setup(self):
        super().setup()
        # nameko builds the Queue inside ReplyListener.setup and offers no hook for its flags
        self.queue.durable = False

    def forget(self, reply_event):
        """Stop waiting for a reply nobody wants any more."""
        for correlation_id, event in list(self._reply_events.items()):
            if event is reply_event:
                del self._reply_events[correlation_id]


class TimedServiceProxy:
    def __init__(self, proxy, service_name, timeout):
        self._proxy = proxy
        self._service_name = service_name
        self._timeout = timeout

    def __getattr__(self, method_name):
        method = getattr(self._proxy, method_name)

        def call(*args, **kwargs):
            reply = None
            try:
                reply = method.call_async(*args, **kwargs)
                with eventlet.Timeout(self._timeout):
                    return reply.result()
            except amqp.exceptions.AccessRefused:
                # this service's broker user may not call that method (services/common/messaging/broker_grants.py)
                raise Forbidden("This service may not call {}.{}.".format(self._service_name, method_name),
                                details={"service": self._service_name, "method": method_name}) from None
            except (eventlet.Timeout, UnknownService, ConnectionError, OSError) as exc:
                if reply is not None:
                    method.reply_listener.forget(reply.reply_event)
                raise ServiceUnavailable(
                    "The {} service did not answer.".format(self._service_name),
                    details={"service": self._service_name, "method": method_name,
                             "reason": type(exc).__name__},
                ) from None

        call.__name__ = method_name
        return call


class TimedRpcProxy(RpcProxy):
    rpc_reply_listener = SafeAckReplyListener()

    def __init__(self, target_service, timeout=None, **options):
        super().__init__(target_service, **options)
        self.timeout = timeout

    def setup(self):
        super().setup()
        if self.timeout is None:
            self.timeout = PlatformSettings.from_config(self.container.config).rpc_timeout
        # an unanswered request expires with its caller's patience
        self.options.setdefault("expiration", self.timeout)
        self.options.setdefault("retry_policy", {"max_retries": 1})

    def get_dependency(self, worker_ctx):
        return TimedServiceProxy(super().get_dependency(worker_ctx), self.target_service, self.timeout)
