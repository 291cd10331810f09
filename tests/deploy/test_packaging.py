"""The project as a package: what a wheel carries, and locks that pin everything with hashes."""
import email
import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMANDS = {"orders-migrate", "orders-seed", "orders-wait-ready", "orders-dlq", "orders-trace", "orders-token"}


def read_lock(name):
    """{package: version} of a pip-compile lock, after checking every pin has a hash."""
    with open(os.path.join(ROOT, name)) as stream:
        text = stream.read()
    pins = {}
    for block in re.split(r"\n(?=\S)", text):
        if block.startswith("#") or not block.strip():
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        assert match, "not an exact pin in {}: {!r}".format(name, block[:80])
        assert "--hash=sha256:" in block, "no hash for {} in {}".format(match.group(1), name)
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_runtime_lock_pins_every_runtime_dependency_and_no_test_tools():
    runtime = read_lock("requirements.txt")
    for package in ("nameko", "kombu", "eventlet", "sqlalchemy", "psycopg2-binary", "pyjwt",
                    "cryptography", "python-json-logger", "setuptools",
                    # nameko's own dependencies that used to float
                    "mock", "path", "six", "wrapt", "dnspython"):
        assert package in runtime, package
    assert runtime["nameko"] == "2.14.1"
    assert int(runtime["setuptools"].split(".")[0]) < 81  # nameko's CLI imports pkg_resources
    for tool in ("pytest", "matplotlib", "numpy", "schemathesis", "podman-compose"):
        assert tool not in runtime, tool


def test_development_lock_has_the_runtime_at_the_same_versions_plus_the_tools():
    runtime, development = read_lock("requirements.txt"), read_lock("requirements-dev.txt")
    assert {name: development.get(name) for name in runtime} == runtime
    for tool in ("pytest", "matplotlib", "schemathesis", "podman-compose", "kubernetes-validate"):
        assert tool in development, tool


def test_run_script_installs_from_the_lock_with_hashes_required():
    with open(os.path.join(ROOT, "run.sh")) as stream:
        script = stream.read()
    assert "--require-hashes -r requirements-dev.txt" in script
    assert "--no-deps" in script


@pytest.mark.slow
def test_wheel_carries_migrations_templates_and_the_operator_commands(tmp_path):
    """About 5 s: builds the wheel (no dependencies) the way `pip install .` would."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path), ROOT],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(tmp_path, wheel)) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith("entry_points.txt"))
        metadata = email.message_from_bytes(next(archive.read(name) for name in names
                                                 if name.endswith(".dist-info/METADATA")))
    for service in ("orders", "inventory", "notifications"):
        assert "services/{}/service.py".format(service) in names
        assert "services/{}/migrations/env.py".format(service) in names
        assert any(name.startswith("services/{}/migrations/versions/0001".format(service)) for name in names)
    assert "services/notifications/templates/email/order_confirmed.html" in names
    assert "scripts/seed.py" in names and not any(name.startswith("tests/") for name in names)
    assert COMMANDS <= set(re.findall(r"^(orders-[a-z-]+) =", entry_points, re.M))
    requires = metadata.get_all("Requires-Dist")
    assert "nameko==2.14.1" in requires and any(item.startswith("PyJWT[crypto]") for item in requires)
