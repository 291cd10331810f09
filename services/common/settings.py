"""The platform's settings: each read from the service config with its default in one place.

``config.yaml`` gives every key below from the environment with the same
default; the defaults here are what applies when a config (a test's, a
script's) leaves a key out. Extensions read them once, at setup.
"""
from dataclasses import dataclass, field, fields

import yaml
from nameko.cli.main import setup_yaml_parser


def load_config(path="config.yaml"):
    """The config exactly as ``nameko run --config path`` would see it."""
    setup_yaml_parser()
    with open(path) as stream:
        return yaml.safe_load(stream)


def given(config, key, default, kind, zero_is_default=True):
    """``config[key]`` as ``kind``; ``default`` when it is missing, empty or (unless told) zero."""
    value = config.get(key)
    if value is None or value == "" or (zero_is_default and not value):
        return default
    return kind(value)


def _literal_zero():
    """Metadata for a setting where 0 means 0 (no grace, no delay), not "use the default"."""
    return {"zero_is_default": False}


@dataclass(frozen=True)
class PlatformSettings:
    """Settings of the shared extensions; the key of each field is its name in capitals."""
    db_pool_size: int = 8  # connections a process keeps per database server
    rpc_timeout: float = 5.0  # seconds an RPC caller waits for its reply
    max_delivery_attempts: int = 5  # deliveries of an event before it is dead-lettered
    retry_backoff_base: float = 0.5  # seconds: the first retry delay, doubling up to the max
    retry_backoff_max: float = 30.0  # seconds
    inbox_retention_days: float = 7.0  # days a handled event's id is kept to drop its redeliveries
    outbox_relay_interval: float = field(default=2.0, metadata=_literal_zero())  # seconds between relay runs
    outbox_grace: float = field(default=3.0, metadata=_literal_zero())  # seconds before the relay takes a row
    # seconds a batch of events waits, after its first message, for more to join it (0: only those already there)
    event_batch_linger: float = field(default=0.02, metadata=_literal_zero())
    max_body_bytes: int = 64 * 1024  # HTTP bodies larger than this are refused with 413
    ready_timeout: float = 1.0  # seconds each /ready check may take
    shutdown_timeout: float = 20.0  # seconds a graceful stop may take before workers are killed

    @classmethod
    def from_config(cls, config):
        defaults = cls()
        return cls(**{
            f.name: given(config, f.name.upper(), getattr(defaults, f.name), type(getattr(defaults, f.name)),
                          f.metadata.get("zero_is_default", True))
            for f in fields(cls)})
