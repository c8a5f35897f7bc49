#!/usr/bin/env bash
# The run command: set-up, build, then run the worker on its embedded defaults:
# report the GPU, render a preview frame of the built-in demo (orbit@2) to
# out/demo-frame.png, and start `tessera serve` (API on 127.0.0.1:8080, metrics
# on 127.0.0.1:9090, data in ./tessera-data, the built-in price book).
# With arguments it runs `tessera render` instead, for example:
#   bash scripts/run.sh examples/dunes.json -o out/dunes.avi
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-check-tools
export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo build --release --locked
./target/release/tessera doctor | sed -n 1,6p
if (($#)); then
  exec ./target/release/tessera render "$@"
fi
./target/release/tessera render -o out/demo-frame.png --frame 60
if [[ -z "${TESSERA_ADMIN_KEY:-}" ]]; then
  TESSERA_ADMIN_KEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export TESSERA_ADMIN_KEY
  echo "admin key for POST /v1/tenants (this run only): $TESSERA_ADMIN_KEY"
fi
exec ./target/release/tessera serve
