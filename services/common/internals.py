"""Every place the platform layer relies on a framework's private parts, in one list.

nameko 2.14, kombu, amqp, eventlet and nameko-tracer offer no public hook
for these; each entry says what the project needs and where it reaches in.
``tests/unit/test_framework_internals.py`` checks that each attribute still
exists in the installed versions (so an upgrade that renames one fails a
test, not a production process) and that no other private attribute of a
framework object is used anywhere in ``services/``.

- nameko ``ServiceContainer._worker_pool`` (``http.JsonWebServer.setup``):
  grows the worker pool by exactly the HTTP slots; nameko sizes it only from
  ``max_workers``, which also sets the AMQP prefetch.
- nameko ``ServiceContainer._died`` (``shutdown``): whether a container has
  stopped, to bound a graceful stop; nameko exposes only ``wait()``.
- nameko ``WebServer._sock``, ``_serv``, ``_is_accepting``
  (``http.JsonWebServer.run``): the accept loop, rewritten to cap open
  connections; nameko has no hook between accept and spawn.
- nameko ``QueueConsumer._consumers`` and kombu ``Consumer._active_tags``
  (``consumers.DeadLetteringQueueConsumer``): which provider a message that
  kombu could not decode belongs to, so it is dead-lettered, not dropped.
  ``_consumers`` also tells ``consumers.SafeAckQueueConsumer.get_consumers``
  which kombu consumer is whose, to give a batching handler its own prefetch.
- nameko ``QueueConsumer._gt`` (``consumers.SafeAckQueueConsumer.kill``):
  the consumer's thread, ended when a kill's cancel and close get no answer
  from the broker within ``KILL_TIMEOUT``; nameko's kill waits for it with
  no timeout.
- nameko ``RpcConsumer._registered`` (``rpc.SafeAckRpcConsumer.setup``):
  nameko's own setup, repeated with the project's queue arguments.
- nameko ``ReplyListener._reply_events`` (``rpc.ReplyListener.forget``): a
  timed-out call's reply event, removed so a long outage leaks nothing.
- amqp ``Transport._write`` (``wire.coalesced_writes``): several frames in
  one socket write; if it is missing, frames are written one by one.
- nameko-tracer ``Tracer.worker_timestamps`` (``tracing``): the start time
  a trace line measures from, recorded without a request-stage line.
- eventlet ``wsgi.HttpProtocol.handle_one_request`` / ``get_environ`` /
  ``close_connection`` (``http.BoundedHttpProtocol``): one deadline per
  request; nameko takes a protocol class and nothing else.
- marshmallow ``validate.Regexp._format_error`` (``validation.FullMatch``):
  the message of a ``Regexp`` whose pattern must match the whole value, so
  error texts stay marshmallow's own.

(marshmallow's ``Field._serialize`` / ``_deserialize`` are its documented
way to write a custom field, so they are not listed.)
"""

# (module, class, attribute): what tests/unit/test_framework_internals.py checks
PRIVATE_PARTS = (
    ("nameko.containers", "ServiceContainer", "_worker_pool"),
    ("nameko.containers", "ServiceContainer", "_died"),
    ("nameko.web.server", "WebServer", "_sock"),
    ("nameko.web.server", "WebServer", "_serv"),
    ("nameko.web.server", "WebServer", "_is_accepting"),
    ("nameko.messaging", "QueueConsumer", "_consumers"),
    ("nameko.messaging", "QueueConsumer", "_gt"),
    ("kombu.messaging", "Consumer", "_active_tags"),
    ("nameko.rpc", "RpcConsumer", "_registered"),
    ("nameko.rpc", "ReplyListener", "_reply_events"),
    ("amqp.transport", "TCPTransport", "_write"),
    ("nameko_tracer.dependency", "Tracer", "worker_timestamps"),
    ("eventlet.wsgi", "HttpProtocol", "handle_one_request"),
    ("eventlet.wsgi", "HttpProtocol", "get_environ"),
    ("eventlet.wsgi", "HttpProtocol", "close_connection"),
    ("marshmallow.validate", "Regexp", "_format_error"),
)
