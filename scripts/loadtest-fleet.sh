#!/usr/bin/env bash
# A fleet load test on one machine: a throwaway PostgreSQL (scripts/postgres.sh),
# a release build of two `tessera serve` workers on it sharing one data
# directory (own ports, own pipeline caches, default --concurrency), a tenant
# made through the admin API, then `tessera loadtest` against worker 1, its
# report on stdout. Everything is stopped and removed at the end, also on
# failure or Ctrl-C.
#
# One URL is enough: the workers share one queue in PostgreSQL, so jobs
# submitted through worker 1 are claimed by whichever worker is free (the
# report's per-lane run times cover both; GET /v1/workers shows who did what).
#
#   usage: [RATE=1] [DURATION=60s] [MIX=examples/loadtest-mix.json] \
#          bash scripts/loadtest-fleet.sh [EXTRA LOADTEST ARGS, e.g. --json --seed 7]
#
# Environment:
#   RATE        submissions per second (default 1)
#   DURATION    how long to send: 60, 60s, 2m, 500ms (default 60s)
#   MIX         mix file, .json or .toml (default examples/loadtest-mix.json)
#   DRAIN       how long to wait for jobs after the last send (default 300s)
#   TIER        the tenant's tier in the built-in price book (default mid;
#               enterprise to allow the urgent lane)
#   TESSERA_BIN a tessera binary to use instead of building one
#               (default: cargo build --release, then $CARGO_TARGET_DIR/release/tessera)
#   CARGO       the cargo to build with (default cargo)
#   KEEP=1      keep the work directory (logs, data) instead of removing it
# Needs: PostgreSQL server binaries (scripts/setup.sh installs them), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1}
DURATION=${DURATION:-60s}
MIX=${MIX:-examples/loadtest-mix.json}
DRAIN=${DRAIN:-300s}
TIER=${TIER:-mid}
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

if [[ -z "${TESSERA_BIN:-}" ]]; then
  "${CARGO:-cargo}" build --release --locked >&2
  TESSERA_BIN="${CARGO_TARGET_DIR:-target}/release/tessera"
fi
[[ -x "$TESSERA_BIN" ]] || { echo "loadtest-fleet.sh: no tessera binary at $TESSERA_BIN" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tessera-fleet.XXXXXX")
# postgres.sh runs the cluster as the postgres user when we are root: it must
# be able to reach its directory inside ours.
chmod 755 "$work"
pids=()
pg_started=0

cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    # A worker drains on SIGTERM (its running attempts stop at the next frame).
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if ((pg_started)); then
    local bin as=()
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    [[ $(id -u) -eq 0 ]] && as=(runuser -u postgres --)
    "${as[@]}" "$bin/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "loadtest-fleet.sh: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

db=$(bash scripts/postgres.sh "$work/pg")
pg_started=1
mkdir -p "$work/data"
TESSERA_ADMIN_KEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export TESSERA_ADMIN_KEY

api=()
for n in 1 2; do
  port=$(free_port)
  mport=$(free_port)
  "$TESSERA_BIN" serve --db "$db" --data "$work/data" --pipeline-cache "$work/cache-$n" --worker-id "loadtest-$n" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
    >"$work/worker-$n.out" 2>"$work/worker-$n.log" &
  pids+=($!)
  api+=("127.0.0.1:$port")
done

# Ready: the store answers, the GPU is open (pipelines compile on first use).
for n in 0 1; do
  for i in $(seq 1 600); do
    if curl -sf "http://${api[$n]}/readyz" >/dev/null; then break; fi
    if ! kill -0 "${pids[$n]}" 2>/dev/null; then
      echo "loadtest-fleet.sh: worker $((n + 1)) exited:" >&2
      tail -20 "$work/worker-$((n + 1)).log" >&2
      exit 1
    fi
    ((i == 600)) && { echo "loadtest-fleet.sh: worker $((n + 1)) not ready after 60 s" >&2; exit 1; }
    sleep 0.1
  done
done

key=$(curl -sf -X POST "http://${api[0]}/v1/tenants" -H "Authorization: Bearer $TESSERA_ADMIN_KEY" \
  -d "{\"name\": \"loadtest\", \"tier\": \"$TIER\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

echo "fleet: workers on ${api[*]} sharing $db; load through ${api[0]} at $RATE/s for $DURATION ($MIX)" >&2
TESSERA_API_KEY="$key" "$TESSERA_BIN" loadtest --url "http://${api[0]}" --rate "$RATE" \
  --duration "$DURATION" --drain "$DRAIN" --mix "$MIX" "$@"

# Which worker ran what: the shared queue spreads the claims.
TESSERA_API_KEY="$key" python3 - "http://${api[0]}" <<'PY' >&2
import collections, json, os, sys, urllib.request
base, key, cursor, by_worker = sys.argv[1], os.environ["TESSERA_API_KEY"], None, collections.Counter()
while True:
    url = base + "/v1/jobs?limit=200" + (f"&cursor={cursor}" if cursor else "")
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key})
    page = json.load(urllib.request.urlopen(req))
    by_worker.update(j["worker"] or "(none)" for j in page["jobs"])
    cursor = page["next_cursor"]
    if not cursor:
        break
print("jobs by the worker that last claimed them: " + ", ".join(f"{w} {n}" for w, n in sorted(by_worker.items())))
PY
