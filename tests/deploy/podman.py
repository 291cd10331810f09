"""podman, the way this project's machines can run it (no Docker engine, no registry).

Images are built and run with ``podman --runtime runc`` and
``deploy/podman/containers.conf``; the Python base image is made locally by
``deploy/podman/make-base-image.sh`` (debootstrap) and kept between runs,
tagged with that script's hash, so only the first run on a machine (or the
first after the recipe changes) pays for it.
"""
import hashlib
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINERS_CONF = os.path.join(ROOT, "deploy", "podman", "containers.conf")
BASE_RECIPE = os.path.join(ROOT, "deploy", "podman", "make-base-image.sh")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def env():
    return dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)


def missing_tools(*tools):
    return [tool for tool in tools if shutil.which(tool) is None]


def podman(*args, check=True, timeout=600, capture=True):
    return subprocess.run(["podman", "--runtime", "runc", *args], env=env(), check=check,
                          timeout=timeout, capture_output=capture, text=True)


def image_exists(tag):
    return podman("image", "exists", tag, check=False).returncode == 0


def base_image_tag():
    with open(BASE_RECIPE, "rb") as stream:
        return "localhost/bookworm-py:" + hashlib.sha256(stream.read()).hexdigest()[:12]


def ensure_base_image():
    """The debootstrap base image, made if this machine does not have it yet; ``(tag, made)``."""
    tag = base_image_tag()
    if image_exists(tag):
        return tag, False
    subprocess.run([BASE_RECIPE, tag], env=env(), check=True, timeout=900)
    return tag, True


def build_image(tag, base):
    """The service image from the Dockerfile on ``base``; layers are reused between runs."""
    args = ["build", "--format", "docker", "--network", "host", "--build-arg", "BASE=" + base,
            "-t", tag, "-f", os.path.join(ROOT, "Dockerfile")]
    if os.path.exists(CA_BUNDLE):  # pip inside the build trusts what this machine trusts
        args += ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro", "--build-arg", "PIP_CERT=" + CA_BUNDLE]
    result = podman(*args, ROOT, check=False, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
