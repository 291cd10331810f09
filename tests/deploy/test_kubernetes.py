"""deploy/kubernetes, rendered offline by ``kubectl kustomize`` and validated
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail)."""
import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYS = os.path.join(ROOT, "deploy", "kubernetes", "overlays")
SERVICES = {"orders": 8000, "inventory": 9102, "notifications": 9103}
# the oldest Kubernetes the manifests promise to work on, and the newest schemas shipped
VERSIONS = ("1.30", kubernetes_validate.latest_version())
SHUTDOWN_TIMEOUT = 20

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl is not installed (Debian does not package it)")


def render(overlay):
    result = subprocess.run(["kubectl", "kustomize", os.path.join(OVERLAYS, overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=["development", "production"])
def rendered(request):
    return request.param, render(request.param)


def by_kind(objects, kind):
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered):
    overlay, objects = rendered
    assert objects
    for version in VERSIONS:
        for item in objects:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail("{} {}/{} against {}: {}".format(
                    overlay, item["kind"], item["metadata"]["name"], version, error.message))


def test_each_service_has_a_probed_deployment_with_resources_and_graceful_termination(rendered):
    overlay, objects = rendered
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == set(SERVICES)
    config = next(iter(by_kind(objects, "ConfigMap").values()))["data"]
    assert int(config["SHUTDOWN_TIMEOUT"]) == SHUTDOWN_TIMEOUT
    for name, port in SERVICES.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        # nameko finishes running workers within SHUTDOWN_TIMEOUT, then 5 s more before it exits
        assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_TIMEOUT + 5
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["args"] == [name]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        # inventory also serves its admin API (catalogue writes)
        assert [p["containerPort"] for p in container["ports"]] == [port] + ([8001] if name == "inventory" else [])
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        env = {item["name"]: item for item in container["env"]}
        # its own database only, its password from the Secret
        assert {key for key in env if key.endswith("_DB_URI")} == {name.upper() + "_DB_URI"}
        assert env[name.upper() + "_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert "$(AMQP_HOST)" in env["AMQP_URI"]["value"]
        # its own broker user, with its own password from the Secret (deploy/rabbitmq/definitions.json)
        assert env["AMQP_URI"]["value"].startswith("amqp://{}:$({}_BROKER_PASSWORD)@".format(name, name.upper()))
        assert env[name.upper() + "_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == \
            name.upper() + "_BROKER_PASSWORD"
        assert not [key for key in env if key.endswith("_BROKER_PASSWORD") and key != name.upper() + "_BROKER_PASSWORD"]
        assert container["envFrom"][0]["configMapRef"]["name"] in by_kind(objects, "ConfigMap")


def test_http_service_migration_jobs_and_disruption_budgets(rendered):
    overlay, objects = rendered
    services = by_kind(objects, "Service")
    assert set(services) == {"orders", "inventory-admin"}
    assert services["orders"]["spec"]["ports"][0]["targetPort"] == "http"
    # inventory's admin API: inside the cluster only
    admin = services["inventory-admin"]["spec"]
    assert admin["type"] == "ClusterIP" and admin["ports"][0]["targetPort"] == "admin"
    assert admin["selector"] == {"app.kubernetes.io/name": "inventory"}
    jobs = by_kind(objects, "Job")
    # development creates the broker users itself; production loads deploy/rabbitmq/definitions.json
    assert set(jobs) == {"migrate-" + name for name in SERVICES} | (
        {"broker-users"} if overlay == "development" else set())
    if overlay == "development":
        [container] = jobs["broker-users"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["broker-users"]
        assert not [item for item in container["env"] if item["name"].endswith("_DB_PASSWORD")]
    for name in SERVICES:
        [container] = jobs["migrate-" + name]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["migrate", name]
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert {budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for budget in budgets.values()} == set(SERVICES)


def test_overlays_name_their_own_external_broker_and_database():
    hosts = {}
    for overlay in ("development", "production"):
        objects = render(overlay)
        config = next(iter(by_kind(objects, "ConfigMap").values()))["data"]
        hosts[overlay] = (config["AMQP_HOST"], config["POSTGRES_HOST"])
        namespaces = {item["metadata"].get("namespace") for item in objects}
        assert namespaces == {{"development": "orders-dev", "production": "orders-prod"}[overlay]}
        secrets = by_kind(objects, "Secret")
        if overlay == "production":
            assert not secrets, "production credentials come from the platform's secret manager"
        else:
            assert len(secrets) == 1
    assert hosts["development"] != hosts["production"]
    production = by_kind(render("production"), "Deployment")
    assert all(item["spec"]["replicas"] >= 2 for item in production.values())
