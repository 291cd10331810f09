#!/bin/sh
# Run once by the postgres image on an empty data directory
# (/docker-entrypoint-initdb.d): one database per service, each owned by its
# own role, so a service's credentials open nothing but its own data.
set -eu
for service in orders inventory notifications; do
    case "$service" in
        orders) password=$ORDERS_DB_PASSWORD ;;
        inventory) password=$INVENTORY_DB_PASSWORD ;;
        notifications) password=$NOTIFICATIONS_DB_PASSWORD ;;
    esac
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
         -v role="$service" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
done
