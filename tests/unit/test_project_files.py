"""The files a newcomer relies on say what the README says they do."""
import os

import yaml

from services.common.db.migrate import SERVICES
from services.common.settings import PlatformSettings, load_config
from services.orders.settings import OrdersSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_config_defaults_give_each_service_its_own_sqlite_file(monkeypatch):
    for name in ("AMQP_URI", "ORDERS_DB_URI", "INVENTORY_DB_URI", "NOTIFICATIONS_DB_URI", "WEB_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(os.path.join(ROOT, "config.yaml"))
    assert config["AMQP_URI"] == "amqp://guest:guest@localhost:5672/"
    assert config["WEB_SERVER_ADDRESS"] == "0.0.0.0:8000"
    uris = {key: config["DB_URIS"]["{}:{}".format(key, base)] for key, base in SERVICES.items()}
    assert uris == {name: "sqlite:///var/{}.sqlite3".format(name) for name in SERVICES}


def test_config_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("INVENTORY_DB_URI", "postgresql://app@db/inventory")
    monkeypatch.setenv("RPC_TIMEOUT", "2.5")
    config = load_config(os.path.join(ROOT, "config.yaml"))
    assert config["DB_URIS"]["inventory:InventoryBase"] == "postgresql://app@db/inventory"
    assert config["RPC_TIMEOUT"] == 2.5


def test_code_defaults_are_config_yaml_defaults(monkeypatch):
    """A config that leaves a key out gets the same value as config.yaml's default."""
    for name in os.environ:
        if name.isupper() and not name.startswith(("PATH", "HOME", "PYTHON", "LANG", "LC_")):
            monkeypatch.delenv(name, raising=False)
    config = load_config(os.path.join(ROOT, "config.yaml"))
    for settings in (PlatformSettings, OrdersSettings):
        assert settings.from_config(config) == settings.from_config({}), settings


def test_compose_file_runs_rabbitmq_with_management_and_a_health_check():
    with open(os.path.join(ROOT, "docker-compose.rabbit.yml")) as stream:
        compose = yaml.safe_load(stream)
    rabbit = compose["services"]["rabbitmq"]
    assert "management" in rabbit["image"]
    assert {"5672:5672", "15672:15672"} <= set(rabbit["ports"])
    assert rabbit["healthcheck"]["test"]


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as stream:
        assert "./run.sh test" in stream.read()
    with open(os.path.join(ROOT, "README.md")) as stream:
        assert "./run.sh test" in stream.read()
