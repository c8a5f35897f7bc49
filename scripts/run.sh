#!/usr/bin/env bash
# The run command: set-up, build, then run the worker on its embedded defaults:
# report the GPU and render the built-in demo clip (orbit@2, 1080p, 4 s, 2x2
# tiles) to out/demo.avi (MJPEG, encoded on the GPU) plus a preview frame. Extra arguments go to
# `tessera render` (for example: examples/dunes.json -o out/dunes.y4m).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo build --release --locked
./target/release/tessera doctor | head -n 6
if (($#)); then
  exec ./target/release/tessera render "$@"
fi
./target/release/tessera render -o out/demo-frame.png --frame 60
./target/release/tessera render -o out/demo.avi
echo "play it with: ffplay out/demo.avi   (or any player that reads MJPEG AVI)"
