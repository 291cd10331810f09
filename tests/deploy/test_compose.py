"""docker-compose.yml as podman-compose reads it: the whole system, configured by environment only."""
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICES = ("orders", "inventory", "notifications")


@pytest.fixture(scope="module")
def compose():
    result = subprocess.run([sys.executable, "-m", "podman_compose", "-f",
                             os.path.join(ROOT, "docker-compose.yml"), "config"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, ORDERS_DB_PASSWORD="s3cret-orders"))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_whole_system_is_in_it(compose):
    services = compose["services"]
    assert set(services) == {"rabbitmq", "postgres", "broker-users", "migrate", *SERVICES}
    assert "management" in services["rabbitmq"]["image"]
    assert services["rabbitmq"]["healthcheck"]["test"] and services["postgres"]["healthcheck"]["test"]
    init = [volume for volume in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in str(volume)]
    assert init, "PostgreSQL gets its three databases from an init script"


def test_migration_runs_once_before_the_services_and_they_wait_for_health(compose):
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["broker-users"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
        assert service["healthcheck"]["test"] == ["CMD", "entrypoint", "probe", "ready"]
        assert service["image"] == migrate["image"], "one image for every service"
        # SHUTDOWN_TIMEOUT (20 s) + 5 s before nameko gives up, + margin
        assert service["environment"]["SHUTDOWN_TIMEOUT"] == "20" and service["stop_grace_period"] == "30s"
    assert services["orders"]["depends_on"]["inventory"] == {"condition": "service_healthy"}


def test_configuration_is_environment_only_and_each_service_sees_only_its_own_database(compose):
    services = compose["services"]
    for name in ("migrate", *SERVICES):
        service = services[name]
        assert "env_file" not in service and not service.get("volumes"), name
    for name in SERVICES:
        database_keys = {key for key in services[name]["environment"] if key.endswith("_DB_URI")}
        assert database_keys == {name.upper() + "_DB_URI"}, name
    # passwords come from the environment
    assert "s3cret-orders" in services["orders"]["environment"]["ORDERS_DB_URI"]
    assert services["inventory"]["environment"]["INVENTORY_METRICS_PORT"] == "9102"
    assert services["notifications"]["environment"]["NOTIFICATIONS_METRICS_PORT"] == "9103"


def test_each_service_connects_as_its_own_broker_user_created_by_the_init_step(compose):
    services = compose["services"]
    users = services["broker-users"]
    assert users["command"] == ["broker-users"] and users["restart"] == "no"
    assert users["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    for name in SERVICES:
        uri = services[name]["environment"]["AMQP_URI"]
        assert uri.startswith("amqp://{}:".format(name)), (name, uri)
        # its own password, and none of the others' or the admin's
        own = users["environment"]["{}_BROKER_PASSWORD".format(name.upper())]
        assert ":{}@".format(own) in uri
        assert not any(key.endswith("_BROKER_PASSWORD") or key.startswith("RABBITMQ_")
                       for key in services[name]["environment"]), name
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"] == users["environment"]["RABBITMQ_ADMIN_USER"]
    assert not any(users["environment"]["RABBITMQ_ADMIN_USER"] in services[name]["environment"]["AMQP_URI"]
                   for name in SERVICES)


def test_inventory_s_admin_api_is_published_on_loopback_only(compose):
    inventory = compose["services"]["inventory"]
    assert inventory["environment"]["INVENTORY_WEB_SERVER_ADDRESS"] == "0.0.0.0:8001"
    ports = inventory["ports"]
    assert len(ports) == 1
    published = ports[0] if isinstance(ports[0], str) else "{host_ip}:{published}:{target}".format(**ports[0])
    assert published.startswith("127.0.0.1:") and published.endswith(":8001"), ports


def test_the_development_compose_file_for_rabbitmq_alone_is_kept():
    with open(os.path.join(ROOT, "docker-compose.rabbit.yml")) as stream:
        assert set(yaml.safe_load(stream)["services"]) == {"rabbitmq"}
