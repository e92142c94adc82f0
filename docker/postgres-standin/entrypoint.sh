#!/bin/sh
# The official image's contract, in short: initialise $PGDATA on the first start (superuser $POSTGRES_USER
# with $POSTGRES_PASSWORD, database $POSTGRES_DB, password logins over TCP), then run postgres as the
# postgres user, listening on every address of the container (host networking: pass -h 127.0.0.1).
set -eu
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" >/tmp/pw && chown postgres /tmp/pw
  runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pw --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 >/dev/null
  rm -f /tmp/pw
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  [ "$db" = postgres ] || runuser -u postgres -- psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
  runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
[ "${1:-postgres}" = postgres ] && shift || true
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' "$@"
