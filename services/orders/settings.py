"""Orders' settings, read once from the service config, with their defaults in one place.

``config.yaml`` gives each of these from the environment with the same
default; these are what applies when a config (a test's, a script's) leaves
one out.
"""
from dataclasses import dataclass

from nameko.extensions import DependencyProvider

from services.common.settings import PlatformSettings, given

IDEMPOTENCY_PURGE_INTERVAL = 300  # seconds between purges of expired idempotency keys and rate-limit windows


@dataclass(frozen=True)
class OrdersSettings:
    max_line_quantity: int = 1000
    max_order_lines: int = 100
    idempotency_key_ttl: float = 24 * 3600  # seconds
    order_rate_limit: int = 30  # orders per customer per window; 0 switches it off
    anonymous_rate_limit: int = 30  # unauthenticated attempts per client address per window; 0: off
    rate_limit_window: int = 60  # seconds
    ready_timeout: float = PlatformSettings.ready_timeout  # seconds

    @classmethod
    def from_config(cls, config):
        defaults = cls()
        return cls(
            max_line_quantity=given(config, "MAX_LINE_QUANTITY", defaults.max_line_quantity, int),
            max_order_lines=given(config, "MAX_ORDER_LINES", defaults.max_order_lines, int),
            idempotency_key_ttl=given(config, "IDEMPOTENCY_KEY_TTL", defaults.idempotency_key_ttl, float),
            order_rate_limit=given(config, "ORDER_RATE_LIMIT", defaults.order_rate_limit, int,
                                    zero_is_default=False),
            anonymous_rate_limit=given(config, "ANONYMOUS_RATE_LIMIT", defaults.anonymous_rate_limit, int,
                                        zero_is_default=False),
            rate_limit_window=given(config, "RATE_LIMIT_WINDOW", defaults.rate_limit_window, int),
            ready_timeout=given(config, "READY_TIMEOUT", defaults.ready_timeout, float),
        )


class Settings(DependencyProvider):
    """``self.settings``: the ``OrdersSettings`` of the service's config, read once at setup."""

    def setup(self):
        self.settings = OrdersSettings.from_config(self.container.config)

    def get_dependency(self, worker_ctx):
        return self.settings

    def for_config(self, config):
        """The settings of ``config`` (a test builds a worker's this way)."""
        return OrdersSettings.from_config(config)
