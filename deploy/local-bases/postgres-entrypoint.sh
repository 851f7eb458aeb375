#!/bin/sh
# Entry point of the local PostgreSQL stand-in (deploy/local-bases/postgres.Containerfile):
# on the first start, an empty data directory becomes a cluster with the role and
# database POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB name, reachable from other
# containers with that password; then PostgreSQL runs in the foreground as `postgres`.
set -eu

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    chown postgres "$password_file"
    $as_postgres initdb --pgdata="$PGDATA" --username="$user" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$database" != postgres ]; then
        # Single-user mode: nothing listens until the database exists.
        echo "CREATE DATABASE \"$database\" OWNER \"$user\"" \
            | $as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi

if [ "$1" = postgres ]; then
    shift
    exec $as_postgres postgres -D "$PGDATA" "$@"
fi
exec "$@"
