#!/usr/bin/env bash
# One entry point for people and CI:
#   ./run.sh            set up (venv, databases, demo catalogue) and run the three services
#   ./run.sh test [ARGS] set up and run the whole test suite (ARGS go to pytest)
#   ./run.sh migrate    bring the three databases to the newest schema
#   ./run.sh seed       add the demo catalogue if the catalogue is empty
#   ./run.sh dlq list|replay SERVICE   inspect or replay a service's dead letters
#   ./run.sh shell      nameko shell against the running services
#   ./run.sh trace ID   an order's timeline across the services (order id or X-Request-ID)
#   ./run.sh token EMAIL [--admin]   a development bearer token for the HTTP API
#   ./run.sh bench [--quick] [--db postgresql] [--instances 1,2]
#                       benchmark against a Nameko baseline (figures in var/bench/)
set -euo pipefail
cd "$(dirname "$0")"

ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CONFIG="${CONFIG:-$ROOT/config.yaml}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export AMQP_URI="${AMQP_URI:-amqp://guest:guest@localhost:5672/}"
SERVICES=(inventory orders notifications)

say() { printf '%s\n' "$*" >&2; }

setup_venv() {
    # The locks (requirements.txt: runtime; requirements-dev.txt: + test and
    # bench) pin every package with its hashes; the project itself goes in
    # editable, without dependencies, for its operator commands (orders-*).
    local stamp="$VENV/.requirements"
    if [[ -f "$stamp" ]] && cat requirements.txt requirements-dev.txt pyproject.toml | cmp -s - "$stamp"; then
        return
    fi
    say "==> installing the locked requirements into $VENV"
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    cat requirements.txt requirements-dev.txt pyproject.toml > "$stamp"
}

broker_reachable() {
    "$PY" - <<'PYEOF'
import os, socket, sys
from kombu.utils.url import url_to_parts
# AMQP_URI may list several brokers separated by ";" (a cluster): any one answering will do
for url in filter(None, os.environ["AMQP_URI"].split(";")):
    parts = url_to_parts(url)
    try:
        socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=2).close()
        sys.exit(0)
    except OSError:
        pass
sys.exit(1)
PYEOF
}

ensure_broker() {
    broker_reachable && return
    if command -v rabbitmq-server >/dev/null 2>&1; then
        say "==> RabbitMQ is not answering at AMQP_URI=$AMQP_URI; starting the local rabbitmq-server"
        rabbitmq-server -detached >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do broker_reachable && return; sleep 1; done
    fi
    say "RabbitMQ is not reachable at AMQP_URI=$AMQP_URI."
    if command -v docker >/dev/null 2>&1; then
        say "Start one with: docker compose -f docker-compose.rabbit.yml up -d"
    else
        say "Install and start RabbitMQ, or set AMQP_URI to a running broker."
    fi
    exit 1
}

ensure_management() {
    # nameko's pytest fixtures create a vhost per test through the management API
    if ! (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; then
        if command -v rabbitmq-plugins >/dev/null 2>&1; then
            say "==> enabling the RabbitMQ management plugin"
            rabbitmq-plugins enable rabbitmq_management >/dev/null
            for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && return; sleep 1; done
        fi
        say "The RabbitMQ management API (port 15672) is needed by the tests and to create the broker users (BROKER_USERS=off runs every service as AMQP_URI's user)."
        exit 1
    fi
}

# Broker users (services/common/messaging/broker_grants.py): against a local broker
# reached as guest (the default AMQP_URI), each service connects as its own
# RabbitMQ user and the operator commands (seed, shell, dlq) as "operator",
# created here with passwords from the environment (ORDERS_BROKER_PASSWORD,
# ...) or generated into var/broker-credentials.env (mode 600). Any other
# AMQP_URI is used as given. BROKER_USERS=off keeps guest.
ensure_broker_users() {
    [[ "${BROKER_USERS:-on}" == off ]] && return 0
    local exports
    if "$PY" -c 'import os, sys; from services.common.messaging.broker_grants import local_admin; sys.exit(local_admin(os.environ["AMQP_URI"]) is None)'; then
        ensure_management
    fi
    exports=$("$PY" -m services.common.messaging.broker_grants provision --amqp-uri "$AMQP_URI" \
        --credentials "${BROKER_CREDENTIALS_FILE:-$ROOT/var/broker-credentials.env}") || exit 1
    eval "$exports"
}

# Development bearer tokens: unless a key source is configured, orders trusts
# a signing key created here the first time (var/dev-jwt-key.pem, ignored by
# git) and `./run.sh token` signs with it.
DEV_JWT_KEY="${JWT_DEV_PRIVATE_KEY_FILE:-$ROOT/var/dev-jwt-key.pem}"
if [[ -z "${JWT_JWKS_URL:-}${JWT_PUBLIC_KEY_FILE:-}${JWT_DEV_HS256_SECRET:-}" ]]; then
    export JWT_PUBLIC_KEY_FILE="${DEV_JWT_KEY%.pem}.pub.pem"
    export JWT_ISSUER="${JWT_ISSUER:-urn:orders:dev}" JWT_AUDIENCE="${JWT_AUDIENCE:-orders-api}"
fi
ensure_dev_key() {
    [[ "${JWT_PUBLIC_KEY_FILE:-}" == "${DEV_JWT_KEY%.pem}.pub.pem" ]] || return 0
    "$PY" -m scripts.token --ensure-key --key "$DEV_JWT_KEY" >/dev/null
}

ensure_deploy_tools() {
    # tests/deploy builds the image and runs compose with Debian's podman (runc,
    # not crun) on a base made by debootstrap. kubectl is not packaged by Debian:
    # without it the Kubernetes tests are skipped, saying so.
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    [[ ${#missing[@]} -eq 0 ]] && return
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "==> installing ${missing[*]} (apt-get) for the image and compose tests"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; } \
            >/dev/null 2>&1 || say "warning: installing ${missing[*]} failed; the image and compose tests will fail"
    else
        say "warning: ${missing[*]} missing; the image and compose tests will fail"
    fi
}

migrate() { "$PY" -m services.common.db.migrate --config "$CONFIG"; }

run_services() {
    local pids=()
    stop_all() {
        trap - INT TERM
        say "==> stopping services"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
        exit 0
    }
    trap stop_all INT TERM
    for service in "${SERVICES[@]}"; do
        local var
        var="$(tr '[:lower:]' '[:upper:]' <<<"$service")_INSTANCES"
        for i in $(seq 1 "${!var:-1}"); do
            local class
            class="$(tr '[:lower:]' '[:upper:]' <<<"${service:0:1}")${service:1}Service"
            local uri_var
            uri_var="$(tr '[:lower:]' '[:upper:]' <<<"$service")_AMQP_URI"
            AMQP_URI="${!uri_var:-$AMQP_URI}" "$VENV/bin/nameko" run --config "$CONFIG" "services.$service.service:$class" \
                > >(trap '' INT TERM; exec sed -u "s/^/[$service.$i] /") 2>&1 &
            pids+=($!)
        done
    done
    "$PY" -m scripts.wait_ready --config "$CONFIG" --timeout 60
    "$PY" -m scripts.seed --config "$CONFIG"
    say "==> orders HTTP API on http://${WEB_SERVER_ADDRESS:-0.0.0.0:8000}, inventory's admin API on http://${INVENTORY_WEB_SERVER_ADDRESS:-0.0.0.0:8001} (Ctrl-C stops everything)"
    wait "${pids[@]}"
}

cmd="${1:-run}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
    run)
        setup_venv; ensure_broker; ensure_broker_users; ensure_dev_key; migrate; run_services ;;
    token)
        setup_venv; ensure_dev_key; exec "$PY" -m scripts.token --key "$DEV_JWT_KEY" "$@" ;;
    test)
        setup_venv; ensure_broker; ensure_management; ensure_deploy_tools
        exec "$PY" -m pytest "$@" ;;
    migrate)
        setup_venv; migrate ;;
    seed)
        setup_venv; ensure_broker; ensure_broker_users; "$PY" -m scripts.seed --config "$CONFIG" ;;
    dlq)
        setup_venv; ensure_broker; ensure_broker_users; "$PY" -m services.common.messaging.deadletters "$@" --config "$CONFIG" ;;
    bench)
        setup_venv; ensure_broker; ensure_management
        exec "$PY" -m bench.run "$@" ;;
    shell)
        setup_venv; ensure_broker; ensure_broker_users; exec "$VENV/bin/nameko" shell --config "$CONFIG" ;;
    trace)
        setup_venv; exec "$PY" -m scripts.trace "$@" --config "$CONFIG" ;;
    *)
        say "usage: ./run.sh [run|test|migrate|seed|dlq|shell|trace|bench|token]"; exit 2 ;;
esac
