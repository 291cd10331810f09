# One image for the three services; the command picks what runs:
#   podman build --build-arg BASE=python:3.11-slim -t nameko-orders .
#   podman run nameko-orders orders|inventory|notifications|migrate
# BASE is any Python 3.11 image with the venv module (python:3.11-slim, or a
# Debian 12 image made locally: deploy/podman/make-base-image.sh).
ARG BASE=python:3.11-slim

# ---- build: the runtime lock (hashes required) and the project into a virtualenv
FROM ${BASE} AS build
# passed through to pip only (a private index or CA bundle); empty by default
ARG PIP_INDEX_URL=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /src/requirements.txt
RUN /opt/venv/bin/pip install --require-hashes -r /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY services /src/services
COPY scripts /src/scripts
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- runtime: the virtualenv, config.yaml and the entrypoint; no compilers, no pip cache
FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore \
    LOG_FORMAT=json WEB_SERVER_ADDRESS=0.0.0.0:8000
# an unprivileged user of its own; it owns nothing but /app/var (SQLite, if used)
RUN echo "app:x:10001:10001:nameko-orders:/app:/usr/sbin/nologin" >> /etc/passwd \
 && echo "app:x:10001:" >> /etc/group \
 && mkdir -p /app/var && chown 10001:10001 /app/var
COPY --from=build /opt/venv /opt/venv
COPY config.yaml /app/config.yaml
COPY deploy/container/entrypoint.sh /usr/local/bin/entrypoint
WORKDIR /app
USER 10001:10001
EXPOSE 8000 9102 9103
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["entrypoint", "probe", "health"]
ENTRYPOINT ["entrypoint"]
CMD ["orders"]
