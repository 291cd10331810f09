"""Service workers for unit tests, built the way a container builds them."""


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


def http_routes(service_class):
    """``{(method, OpenAPI path)}`` of every JSON ``@http`` entrypoint of ``service_class``."""
    from services.common.http.front_door import JsonHttpHandler
    routes = set()
    for name in dir(service_class):
        for entrypoint in getattr(getattr(service_class, name), "nameko_entrypoints", ()):
            if isinstance(entrypoint, JsonHttpHandler):
                path = entrypoint.url.replace("<string:", "{").replace(">", "}")
                routes |= {(method.lower(), path) for method in entrypoint.method.split(",")}
    return routes
