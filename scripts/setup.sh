#!/usr/bin/env bash
# Installs what tessera needs on a fresh Debian/Ubuntu machine: a Vulkan driver
# (Mesa lavapipe for software rendering; on GPU nodes the NVIDIA driver provides
# its own ICD), ffmpeg for the tests' independent decoder, Prometheus's promtool
# to lint the metrics exposition, PostgreSQL (the fleet's store, and the second
# backend every store test runs on), schemathesis (the API contract run, in
# target/st-venv) and a Rust toolchain.
# Safe to run again: it skips what is already there.
set -euo pipefail

need_apt=()
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v cargo >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
st_venv="$(cd "$(dirname "$0")/.." && pwd)/target/st-venv"
if [[ ! -x "$st_venv/bin/st" ]]; then
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi

if ((${#need_apt[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# schemathesis (the API contract run), from PyPI, in a venv of its own
# (Debian's Python refuses system-wide pip installs), at one pinned version so
# a new release cannot change what the contract run checks.
if [[ ! -x "$st_venv/bin/st" ]]; then
  echo "setup: installing schemathesis into $st_venv" >&2
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q 'schemathesis==4.32.5'
fi

if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  echo "setup: installing Rust with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
fi
