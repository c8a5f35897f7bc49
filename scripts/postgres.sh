#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests (trust auth, loopback
# only, a socket and data directory of its own under DIR) and prints its URL.
# Stop it with: pg_ctl -D DIR/data stop. PostgreSQL refuses to run as root, so
# as root the cluster runs as the `postgres` user.
#   usage: scripts/postgres.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/postgres.sh DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
  echo "postgres.sh: no PostgreSQL server binaries (apt-get install postgresql)" >&2
  exit 1
fi
mkdir -p "$dir"
as=()
if [[ $(id -u) -eq 0 ]]; then
  chown postgres "$dir"
  as=(runuser -u postgres --)
fi
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1
# A free port: try a few at random.
for _ in $(seq 1 20); do
  port=$((20000 + RANDOM % 40000))
  # Tests make a database each and every worker a pool: room for them all.
  # fsync off: a throwaway cluster for tests, never for data that matters.
  if "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" >/dev/null 2>&1; then
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    exit 0
  fi
done
echo "postgres.sh: the server did not start; see $dir/server.log" >&2
exit 1
