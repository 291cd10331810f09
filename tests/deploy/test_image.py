"""The Dockerfile and docker-compose.yml, really built and run (podman, podman-compose).

The image is built from the Dockerfile on a Debian base made locally (no
registry here), then the compose system is brought up with
``compose.host.yml`` on top: the services on the host network against this
machine's RabbitMQ (a vhost of the test's own) and PostgreSQL (fresh, empty
databases, migrated by compose's one-shot ``migrate`` service). An order
placed over the published HTTP port must be confirmed and notified.
(docker-compose.yml's full dependency graph is checked in test_compose.py.)

Cost (2 shared cores): the first run on a machine makes the base image with
debootstrap (about 2 minutes) and builds the image cold (about 1.5 minutes);
later runs reuse both: about 6 s of build (the project layer) plus about
13 s from compose up to every service ready, 35-40 s for the module.
"""
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
import requests
import yaml

from scripts.throwaway import drop_database, pg_admin
from scripts.token import mint
from services.common.messaging import broker_grants
from tests.conftest import PG_ADMIN_DSN, PG_URI_TEMPLATE
from tests.support import eventually, free_port

from . import podman as pm

pytestmark = pytest.mark.slow

ROOT = pm.ROOT
COMPOSE = [sys.executable, "-m", "podman_compose"]
SERVICES = ("orders", "inventory", "notifications")
# the compose system trusts a development HS256 secret; the customer's token is signed with it
JWT_SECRET = secrets.token_hex(32)
CUSTOMER = {"Authorization": "Bearer " + mint(JWT_SECRET, "cora.compose@example.com", issuer="urn:orders:compose-test",
                                                audience="orders-api", algorithm="HS256")}
ADMIN = {"Authorization": "Bearer " + mint(JWT_SECRET, None, True, issuer="urn:orders:compose-test",
                                             audience="orders-api", algorithm="HS256")}
MANAGEMENT = "http://127.0.0.1:15672"


@pytest.fixture(scope="module")
def image():
    missing = pm.missing_tools("podman", "runc", "debootstrap")
    assert not missing, "needs {} (./run.sh test installs them with apt-get)".format(", ".join(missing))
    started = time.monotonic()
    base, made = pm.ensure_base_image()
    base_seconds = time.monotonic() - started
    tag = "localhost/nameko-orders:test-" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    pm.build_image(tag, base)
    print("\nbase image {} ({}: {:.0f}s); service image built in {:.0f}s".format(
        base, "made" if made else "cached", base_seconds, time.monotonic() - started))
    yield tag
    pm.podman("rmi", "-f", tag, check=False)


def test_image_runs_as_a_non_root_user_without_compilers(image):
    inspected = yaml.safe_load(pm.podman("image", "inspect", image, "--format", "json").stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["entrypoint"]
    assert inspected.get("Healthcheck", config.get("Healthcheck", {}))["Test"] == \
        ["CMD", "entrypoint", "probe", "health"]
    checked = pm.podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                        "id -u; for c in gcc cc c++ make; do command -v $c; done; "
                        "ls /opt/venv/bin/orders-migrate; test ! -e /src && echo no-sources",
                        check=False)
    lines = checked.stdout.split()
    assert lines[0] == "10001", checked
    assert lines[1:] == ["/opt/venv/bin/orders-migrate", "no-sources"], checked  # no compilers found
    usage = pm.podman("run", "--rm", "--network", "none", image, "bogus", check=False)
    assert usage.returncode == 2 and "orders|inventory|notifications|migrate" in usage.stderr


@pytest.fixture
def stack(image, rabbit_config, tmp_path):
    """The compose system on the host network; taken down (and its databases dropped) after."""
    databases = {service: "test_compose_{}_{}".format(service, uuid.uuid4().hex[:8]) for service in SERVICES}
    for name in databases.values():
        pg_admin(PG_ADMIN_DSN, "CREATE DATABASE {}".format(name))  # empty: compose migrates them
    ports = {"http": free_port(), "orders": free_port(), "inventory": free_port(), "notifications": free_port(),
             "inventory_http": free_port()}
    # compose's broker-users step creates a user per service on the test's vhost
    vhost = rabbit_config["vhost"]
    prefix = broker_grants.user_prefix(vhost)
    passwords = {role: secrets.token_urlsafe(16) for role in broker_grants.ROLES}
    uris = {role: broker_grants.amqp_uri_for(rabbit_config["AMQP_URI"], broker_grants.user_name(role, prefix),
                                             passwords[role]) for role in broker_grants.ROLES}
    env = dict(os.environ, CONTAINERS_CONF=pm.CONTAINERS_CONF, IMAGE=image,
               TEST_VHOST=vhost, TEST_USER_PREFIX=prefix,
               TEST_INVENTORY_HTTP_PORT=str(ports["inventory_http"]),
               **{"TEST_{}_BROKER_PASSWORD".format(role.upper()): passwords[role] for role in broker_grants.ROLES},
               **{"TEST_{}_AMQP_URI".format(role.upper()): uris[role] for role in SERVICES},
               TEST_HTTP_PORT=str(ports["http"]), TEST_ORDERS_METRICS_PORT=str(ports["orders"]),
               TEST_JWT_SECRET=JWT_SECRET, TEST_INVENTORY_PORT=str(ports["inventory"]),
               TEST_NOTIFICATIONS_PORT=str(ports["notifications"]),
               **{"TEST_{}_DB_URI".format(service.upper()): PG_URI_TEMPLATE.format(name)
                  for service, name in databases.items()})
    project = "orders-test-" + uuid.uuid4().hex[:8]
    command = COMPOSE + ["--podman-args=--runtime runc", "-p", project,
                         "-f", os.path.join(ROOT, "docker-compose.yml"),
                         "-f", os.path.join(ROOT, "tests", "deploy", "compose.host.yml")]

    def compose(*args, timeout=600):
        return subprocess.run(command + list(args), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    running = type("Stack", (), {})()
    running.compose, running.ports, running.project = compose, ports, project
    running.url = "http://127.0.0.1:{}".format(ports["http"])
    running.admin_url = "http://127.0.0.1:{}".format(ports["inventory_http"])
    running.vhost, running.prefix, running.uris = vhost, prefix, uris
    try:
        yield running
    finally:
        logs = compose("logs", timeout=120)
        down = compose("down", "-v", "-t", "30", timeout=300)
        for name in databases.values():
            drop_database(PG_ADMIN_DSN, name)
        broker_grants.remove(broker_grants.Management(MANAGEMENT, "guest", "guest"), prefix)
        print(logs.stdout[-6000:], logs.stderr[-2000:], down.stderr[-2000:])


def test_compose_system_takes_an_order_over_the_published_port_and_notifies(stack):
    started = time.monotonic()
    # the broker users and the migration once, then the services (compose.host.yml says why in two steps)
    up = stack.compose("up", "-d", "--no-deps", "broker-users", "migrate")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    for step in ("broker-users", "migrate"):
        done = pm.podman("wait", "{}_{}_1".format(stack.project, step), check=False, timeout=300)
        assert done.stdout.strip() == "0", (step, done, stack.compose("logs", step, timeout=60).stdout[-3000:])
    up = stack.compose("up", "-d", "--no-deps", *SERVICES)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]

    def ready():
        return requests.get(stack.url + "/ready", timeout=3).status_code == 200
    eventually(ready, timeout=120, interval=1, message="orders /ready on the published port")
    for service in ("inventory", "notifications"):
        port = stack.ports[service]
        eventually(lambda: requests.get("http://127.0.0.1:{}/ready".format(port), timeout=3).ok,
                   timeout=60, interval=1, message=service + " /ready")
    # the images' own probe, as compose's healthcheck runs it
    for service in SERVICES:
        probe = pm.podman("exec", "{}_{}_1".format(stack.project, service),
                          "entrypoint", "probe", "ready", check=False)
        assert probe.returncode == 0, probe
    up_seconds = time.monotonic() - started

    # each service is connected as its own broker user, none as guest
    def users():
        connections = broker_grants.Management(MANAGEMENT, "guest", "guest").request(
            "GET", "/api/vhosts/{}/connections".format(urllib.parse.quote(stack.vhost, safe="")))
        return {connection["user"] for connection in connections}
    own = {broker_grants.user_name(service, stack.prefix) for service in SERVICES}
    eventually(lambda: own <= users(), timeout=30, interval=1, message="connections as the services' own users")
    assert "guest" not in users()
    # the operator command, in the image, with the operator's broker user: a service's
    # own user may not write the catalogue
    refused = pm.podman("exec", "{}_inventory_1".format(stack.project), "entrypoint", "seed", check=False)
    assert refused.returncode != 0, refused
    seeded = pm.podman("exec", "-e", "AMQP_URI=" + stack.uris[broker_grants.OPERATOR],
                       "{}_inventory_1".format(stack.project), "entrypoint", "seed", check=False)
    assert seeded.returncode == 0, seeded
    # the catalogue's writes: inventory's admin API, admin tokens only
    restocked = requests.post(stack.admin_url + "/products/WIDGET-1/restock", json={"quantity": 5},
                              headers=ADMIN, timeout=10)
    assert restocked.status_code == 200, restocked.text
    assert requests.post(stack.admin_url + "/products/WIDGET-1/restock", json={"quantity": 5},
                         headers=CUSTOMER, timeout=10).status_code == 403

    def place():  # 400 (unknown sku) until orders has its copy of the catalogue
        response = requests.post(stack.url + "/orders", headers=CUSTOMER, timeout=10, json={
            "customer_email": "cora.compose@example.com", "lines": [{"sku": "WIDGET-1", "quantity": 2}]})
        assert response.status_code in (202, 400), response.text
        return response if response.status_code == 202 else None
    order_id = eventually(place, timeout=30, message="order accepted").json()["id"]

    def confirmed():
        order = requests.get(stack.url + "/orders/" + order_id, headers=CUSTOMER, timeout=5).json()
        return order["status"] == "confirmed"
    eventually(confirmed, timeout=60, message="order confirmed")

    def notified():  # the default `log` channel delivered the confirmation
        logs = stack.compose("logs", "notifications", timeout=60).stdout
        return "Order reference: {}".format(order_id) in logs and "(attempt 1)" in logs
    eventually(notified, timeout=60, interval=1, message="customer notified")
    print("\ncompose up to ready: {:.0f}s".format(up_seconds))
