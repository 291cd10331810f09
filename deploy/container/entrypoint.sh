#!/bin/sh
# The image's entrypoint: one process per container, chosen by the command.
#   orders | inventory | notifications   nameko run of that service (PID 1 via exec,
#                                        so SIGTERM reaches nameko's graceful shutdown)
#   migrate                              bring the three databases to the newest schema
#   broker-users                         create each service's RabbitMQ user and the operator's,
#                                        with their grants (management API; compose's init step)
#   probe [health|ready]                 exit 0 if this container's service answers
#                                        (the image's HEALTHCHECK; compose probes ready)
#   seed | dlq ... | trace ... | wait-ready   the operator commands
# Configuration comes from the environment only (config.yaml reads it).
set -eu
CONFIG=${CONFIG:-/app/config.yaml}
STATE=/tmp/service

service_class() {
    case "$1" in
        orders) echo OrdersService ;;
        inventory) echo InventoryService ;;
        notifications) echo NotificationsService ;;
    esac
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    orders|inventory|notifications)
        echo "$cmd" > "$STATE"
        exec nameko run --config "$CONFIG" "services.$cmd.service:$(service_class "$cmd")" ;;
    migrate)
        exec orders-migrate --config "$CONFIG" "$@" ;;
    broker-users)
        exec python -m services.common.messaging.broker_grants create-users \
            --management-url "${BROKER_MANAGEMENT_URL:-http://rabbitmq:15672}" \
            --vhost "${BROKER_VHOST:-orders}" --user-prefix "${BROKER_USER_PREFIX:-}" "$@" ;;
    seed)
        exec orders-seed --config "$CONFIG" "$@" ;;
    wait-ready)
        exec orders-wait-ready --config "$CONFIG" "$@" ;;
    dlq)
        exec orders-dlq "$@" --config "$CONFIG" ;;
    trace)
        exec orders-trace "$@" --config "$CONFIG" ;;
    probe)
        service=$(cat "$STATE" 2>/dev/null || true)
        case "$service" in
            orders) port=${WEB_SERVER_ADDRESS:-0.0.0.0:8000}; port=${port##*:} ;;
            inventory) port=${INVENTORY_METRICS_PORT:-9102} ;;
            notifications) port=${NOTIFICATIONS_METRICS_PORT:-9103} ;;
            *) exit 0 ;;  # a one-shot command (migrate, seed): nothing to probe
        esac
        exec python -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=3)
except Exception as exc:
    sys.exit("not healthy: {}".format(exc))' "http://127.0.0.1:$port/${1:-health}" ;;
    *)
        echo "usage: entrypoint orders|inventory|notifications|migrate|broker-users|probe [health|ready]|seed|dlq|trace|wait-ready" >&2
        exit 2 ;;
esac
