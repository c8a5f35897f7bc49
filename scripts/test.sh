#!/usr/bin/env bash
# The test command: set-up, formatting, lints, the deploy checks (Dockerfile,
# Kubernetes manifests) and the operations checks (Prometheus rules and their
# unit tests, dashboard queries), then every test (GPU tests run on Mesa
# lavapipe where there is no GPU), then every bench at toy sizes
# (`scripts/gpu-bench.sh --small`, its section in target/gpu-bench/ci.md).
# Store tests run on SQLite and on a
# throwaway PostgreSQL cluster this script starts (and stops), unless
# TESSERA_TEST_POSTGRES already names a server; without PostgreSQL those tests
# are skipped loudly (TESSERA_REQUIRE_POSTGRES=1 makes that a failure, as in CI).
# `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Software rendering needs no display; Mesa only warns without this.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/check-deploy.sh
bash scripts/check-ops.sh
bash scripts/check-release-surface.sh
log=$(mktemp)
pgdir=""
cleanup() {
  rm -f "$log"
  if [[ -n "$pgdir" ]]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$bin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    else "$bin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$pgdir"
  fi
}
trap cleanup EXIT
if [[ -z "${TESSERA_TEST_POSTGRES:-}" ]]; then
  pgdir=$(mktemp -d /tmp/tessera-pg.XXXXXX)
  if url=$(bash scripts/postgres.sh "$pgdir"); then
    export TESSERA_TEST_POSTGRES="$url"
    echo "PostgreSQL for the tests: $url"
  else
    echo "WARNING: no PostgreSQL server: the PostgreSQL half of the store tests will be SKIPPED" >&2
  fi
fi
cargo test --workspace --locked 2>&1 | tee "$log"
# The store's suites again, on both backends, with the clock at the last
# second of a month and in a later year (libfaketime; cargo itself does not
# run under it, so the test binaries run directly): nothing they check may
# depend on the date the tests run on.
mapfile -t store_tests < <(cargo test -p tessera-store --locked --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        print(m["executable"])')
for when in '@2026-12-31 23:59:59' '@2031-02-28 23:59:58'; do
  for bin in "${store_tests[@]}"; do
    echo "store tests at $when: $(basename "$bin")"
    (cd store && faketime -f "$when" "$bin" 2>&1) | tee -a "$log"
  done
done
# Every bench at toy sizes on the dev build above, so that the GPU node's bench
# script (and the benches) cannot rot; reuses the PostgreSQL started above.
bash scripts/gpu-bench.sh --small --out target/gpu-bench/ci.md >/dev/null
# The API contract: schemathesis (every phase, every check) against a live
# worker built by the tests above, serving its own /openapi.json.
if [[ -x target/st-venv/bin/st ]]; then
  PATH="$PWD/target/st-venv/bin:$PATH" python3 scripts/api-contract.py target/debug/tessera --max-examples 100
elif [[ -n "${TESSERA_REQUIRE_SCHEMATHESIS:-}" ]]; then
  echo "schemathesis is required (scripts/setup.sh installs it into target/st-venv)" >&2; exit 1
else
  echo "WARNING: no schemathesis in target/st-venv: the API contract run is SKIPPED" >&2
fi
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
