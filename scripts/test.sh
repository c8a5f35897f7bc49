#!/usr/bin/env bash
# The test command: set-up, formatting, lints, then every test (GPU tests run on
# Mesa lavapipe where there is no GPU). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Software rendering needs no display; Mesa only warns without this.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
