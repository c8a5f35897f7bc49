#!/usr/bin/env bash
# Runs every bench under benches/ and prints one Markdown section for
# BENCHMARKS.md: `### <card> — <date>`, a machine line (GPU, driver, the Vulkan
# adapter as tessera reports it, CPU, OS), then each bench's command and tables.
# The section goes to stdout and to a file; progress and cargo's output go to
# stderr.
#
# Modes:
#   full   (an NVIDIA node) checks the driver (nvidia-smi), that the Vulkan
#          loader sees the NVIDIA ICD and that tessera picks the NVIDIA adapter
#          rather than falling back to llvmpipe, builds the benches with the
#          release (bench) profile and runs them at their full default sizes.
#          TESSERA_BENCH_* variables in the environment reach the benches.
#   small  (lavapipe, CI) the same benches at toy sizes and frame counts (a
#          few minutes on 2 cores), built with the dev profile so that it reuses
#          the test build; the figures only show the benches still run.
#   auto   (default) full when `nvidia-smi` works, else small. On a node whose
#          nvidia-smi works but whose Vulkan adapter is not the NVIDIA GPU the
#          run fails (with what to fix) instead of measuring llvmpipe; pass
#          --small to bench whatever adapter tessera picks.
#
# Usage: scripts/gpu-bench.sh [--full | --small] [--out FILE] [--only NAMES]
#   --full, --small   force a mode (env TESSERA_GPU_BENCH_MODE=full|small|auto)
#   --out FILE        also write the section to FILE (env TESSERA_GPU_BENCH_OUT;
#                     default target/gpu-bench/<UTC timestamp>.md)
#   --only NAMES      run only these benches, comma-separated (env
#                     TESSERA_GPU_BENCH_ONLY; default all: render, encode,
#                     metering, chunks, queue, load, concurrency)
# Environment:
#   TESSERA_BENCH_POSTGRES, else TESSERA_TEST_POSTGRES: the PostgreSQL server
#     for the queue bench; without either, a throwaway cluster is started with
#     scripts/postgres.sh and stopped on exit.
#   TESSERA_ADAPTER, TESSERA_BACKEND: adapter choice, as for the worker.
#
# It runs scripts/setup.sh first (a Rust toolchain, the Vulkan loader,
# PostgreSQL, ffmpeg...), so a fresh GPU node needs nothing else. It exits
# non-zero if a check fails, a bench fails, or a bench prints no table row.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCHES=(render encode metering chunks queue load concurrency)

# Toy sizes for small mode, per bench (see each bench's `//!` header). Tiles
# with a 32 px overlap need 128 px a side for 2x2 and 192 px for 3x3.
small_env() {
  case $1 in
    render) echo TESSERA_BENCH_FRAMES=2 TESSERA_BENCH_SIZES=256x144,384x216 ;;
    # GPU timestamps on lavapipe too, so that the clip runs 2 and 3 frames deep.
    encode) echo TESSERA_TIMING=gpu TESSERA_BENCH_FRAMES=3 TESSERA_BENCH_SIZES=256x144,384x216 TESSERA_BENCH_CLIP_SIZE=256x144 TESSERA_BENCH_CLIP_FRAMES=6 ;;
    metering) echo TESSERA_BENCH_FRAMES=2 ;;
    chunks) echo TESSERA_BENCH_SIZE=256x144 TESSERA_BENCH_SECONDS=2 TESSERA_BENCH_ROUNDS=1 ;;
    queue) echo TESSERA_BENCH_QUEUE_SIZES=100,1000 TESSERA_BENCH_WORKERS=2 TESSERA_BENCH_EVENTS=4000 TESSERA_BENCH_LEDGER_ROWS=20000 ;;
    # GPU timestamps on lavapipe too, so that the submissions table and the
    # grouping round (what a GPU node runs) are exercised.
    load) echo TESSERA_TIMING=gpu TESSERA_BENCH_JOBS=9 TESSERA_BENCH_SUBMIT_FRAMES=2 ;;
    # A simulation (no GPU): fewer windows per load step.
    concurrency) echo TESSERA_BENCH_WINDOWS=10 ;;
    *) die "no small-mode settings for bench '$1'" ;;
  esac
}

log() { echo "gpu-bench: $*" >&2; }
die() {
  echo "gpu-bench: ERROR: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

parse_args() {
  mode=${TESSERA_GPU_BENCH_MODE:-auto}
  out=${TESSERA_GPU_BENCH_OUT:-}
  only=${TESSERA_GPU_BENCH_ONLY:-}
  while (($#)); do
    case $1 in
      --full) mode=full ;;
      --small) mode=small ;;
      --out) (($# >= 2)) || die "--out needs a file name"; out=$2; shift ;;
      --out=*) out=${1#--out=} ;;
      --only) (($# >= 2)) || die "--only needs bench names"; only=$2; shift ;;
      --only=*) only=${1#--only=} ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  case $mode in
    full | small | auto) ;;
    *) die "mode '$mode' is not one of full, small, auto (TESSERA_GPU_BENCH_MODE)" ;;
  esac
  if [[ -n "$only" ]]; then
    local name names=()
    IFS=, read -ra names <<<"$only"
    for name in "${names[@]}"; do
      [[ " ${BENCHES[*]} " == *" $name "* ]] || die "no bench '$name' (benches: ${BENCHES[*]})"
    done
    BENCHES=("${names[@]}")
  fi
  started=$(date -u +%Y%m%dT%H%M%SZ)
  out=${out:-target/gpu-bench/$started.md}
}

nvidia_smi_works() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# Sets gpu_name, gpu_driver, gpu_memory from nvidia-smi (the first GPU).
check_driver() {
  command -v nvidia-smi >/dev/null 2>&1 || die "full mode needs the NVIDIA driver: nvidia-smi is not on PATH (in a container: run it with --gpus all)"
  local q
  if ! q=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
    die "nvidia-smi failed, so the driver is not usable here: $q"
  fi
  local n
  n=$(grep -c . <<<"$q")
  q=$(head -1 <<<"$q")
  IFS=, read -r gpu_name gpu_driver gpu_memory <<<"$q"
  gpu_name=$(xargs <<<"$gpu_name")
  gpu_driver=$(xargs <<<"$gpu_driver")
  gpu_memory=$(xargs <<<"$gpu_memory")
  [[ -n "$gpu_name" && -n "$gpu_driver" ]] || die "could not read the GPU's name and driver from nvidia-smi: '$q'"
  log "driver: $gpu_name, driver $gpu_driver, $gpu_memory ($n GPU(s); tessera uses one)"
}

# What to fix when Vulkan does not reach the NVIDIA driver.
vulkan_hint() {
  local caps=${NVIDIA_DRIVER_CAPABILITIES-}
  if [[ -n "$caps" && "$caps" != *graphics* && "$caps" != *all* ]]; then
    echo "NVIDIA_DRIVER_CAPABILITIES=$caps lacks 'graphics', so the container runtime did not mount the driver's Vulkan ICD: start the container with -e NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility (or all)"
  else
    echo "install the driver's Vulkan ICD (Debian/Ubuntu: the libnvidia-gl-<version> package of the driver version nvidia-smi reports; in a container: NVIDIA_DRIVER_CAPABILITIES must include graphics)"
  fi
}

# The ICD manifests the Vulkan loader reads, as it searches for them.
icd_manifests() {
  local list=${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-}}
  if [[ -n "$list" ]]; then
    tr ':' '\n' <<<"$list"
    return
  fi
  local dirs=() d
  IFS=: read -ra d <<<"${XDG_CONFIG_DIRS:-/etc/xdg}"
  dirs+=("${d[@]}")
  dirs+=(/etc)
  [[ -n "${HOME:-}" ]] && dirs+=("${XDG_DATA_HOME:-$HOME/.local/share}")
  IFS=: read -ra d <<<"${XDG_DATA_DIRS:-/usr/local/share:/usr/share}"
  dirs+=("${d[@]}")
  for d in "${dirs[@]}"; do
    [[ -d "$d/vulkan/icd.d" ]] && find "$d/vulkan/icd.d" -maxdepth 1 -name '*.json'
  done
  return 0
}

# The NVIDIA ICD is there and the library it names can be loaded.
check_icd() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || die "no Vulkan loader (libvulkan.so.1): apt-get install libvulkan1"
  local manifests nvidia=() m
  manifests=$(icd_manifests)
  while IFS= read -r m; do
    [[ -n "$m" && -f "$m" ]] || continue
    if [[ "$(basename "$m")" == nvidia* ]] || grep -qi 'nvidia' "$m"; then nvidia+=("$m"); fi
  done <<<"$manifests"
  if ((${#nvidia[@]} == 0)); then
    die "the Vulkan loader sees no NVIDIA ICD (manifests found: $(echo "$manifests" | xargs echo | sed 's/^$/none/')), so tessera would fall back to llvmpipe: $(vulkan_hint)"
  fi
  local lib
  lib=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "${nvidia[0]}" 2>/dev/null) ||
    die "cannot read library_path from the NVIDIA ICD manifest ${nvidia[0]}"
  if [[ "$lib" == /* ]]; then
    [[ -e "$lib" ]] || die "the NVIDIA ICD ${nvidia[0]} names $lib, which does not exist: $(vulkan_hint)"
  elif ! ldconfig -p | grep -qF "$lib"; then
    die "the NVIDIA ICD ${nvidia[0]} names $lib, which the dynamic linker cannot find: $(vulkan_hint)"
  fi
  log "Vulkan ICD: ${nvidia[0]} ($lib)"
}

# Builds the benches (and the tessera binary beside them); sets bin, build_s.
build() {
  local t0=$SECONDS target
  log "building the benches (${cargo_profile[*]:-release bench profile})"
  cargo bench --locked "${cargo_profile[@]}" --no-run
  build_s=$((SECONDS - t0))
  target=$(cargo metadata --locked --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  bin=$target/$profile_dir/tessera
  [[ -x "$bin" ]] || die "the build did not produce $bin"
}

# Sets adapter_* from `tessera doctor --json` (the adapter tessera opens).
read_adapter() {
  local json fields
  json=$("$bin" doctor --json 2>/dev/null) || true
  fields=$(python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
c = d.get("chosen")
seen = "; ".join("%s [%s %s]" % (a["name"], a["backend"], a["device_type"]) for a in d.get("adapters", [])) or "none"
if not c:
    print("\x1f".join(["", "", "", "", "", "", seen, d.get("error") or "no adapter chosen"]))
else:
    a = c["adapter"]
    print("\x1f".join([a["name"], a["backend"], a["device_type"], a["driver"], a["driver_info"],
                     "gpu" if c["timestamps"] else "host", seen, ""]))
' <<<"$json") || die "tessera doctor --json printed no JSON: $json"
  IFS=$'\x1f' read -r adapter_name adapter_backend adapter_type adapter_driver adapter_driver_info \
    adapter_timing adapters_seen adapter_error <<<"$fields"
  [[ -n "$adapter_name" ]] || die "tessera opens no GPU adapter: $adapter_error (adapters seen: $adapters_seen)"
  log "tessera's adapter: $adapter_name ($adapter_backend, $adapter_type, $adapter_driver $adapter_driver_info), $adapter_timing timing"
}

check_nvidia_adapter() {
  if [[ "${adapter_name,,}" != *nvidia* || "$adapter_type" == Cpu ]]; then
    local fix
    if [[ "${adapters_seen,,}" == *nvidia* ]]; then
      fix="tessera sees an NVIDIA adapter but opens another: check TESSERA_ADAPTER and TESSERA_BACKEND"
    else
      fix=$(vulkan_hint)
    fi
    die "tessera picks '$adapter_name' ($adapter_type), not the NVIDIA GPU nvidia-smi reports ($gpu_name), so the benches would measure a software adapter. Adapters seen: $adapters_seen. Fix: $fix. (--small benches whatever adapter is there, at toy sizes.)"
  fi
}

stop_postgres() {
  [[ -n "${pgdir:-}" ]] || return 0
  local pgbin
  pgbin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)
  if [[ -d "$pgbin" ]]; then
    if [[ $(id -u) -eq 0 ]]; then
      runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    else
      "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$pgdir"
  pgdir=""
}

cleanup() {
  stop_postgres
  [[ -n "${work:-}" ]] && rm -rf "$work"
  return 0
}

# Sets pg_url: the server given in the environment, or a throwaway cluster.
start_postgres() {
  pg_url=${TESSERA_BENCH_POSTGRES:-${TESSERA_TEST_POSTGRES:-}}
  if [[ -n "$pg_url" ]]; then
    log "PostgreSQL for the queue bench: $pg_url (from the environment)"
    return
  fi
  pgdir=$(mktemp -d /tmp/tessera-bench-pg.XXXXXX)
  pg_url=$(bash scripts/postgres.sh "$pgdir") || die "could not start PostgreSQL for the queue bench (scripts/postgres.sh; log in $pgdir)"
  log "PostgreSQL for the queue bench: $pg_url (throwaway, stopped on exit)"
}

# Whether a bench's output has a Markdown table with at least one data row.
has_table_row() {
  awk '/^\|[-:| ]+\|[[:space:]]*$/ { sep = 1; next }
       /^\|/ { if (sep) rows++; next }
       { sep = 0 }
       END { exit rows > 0 ? 0 : 1 }' "$1"
}

# Runs one bench; appends its block to the section; records a failure.
run_bench() {
  local name=$1 env=() t0=$SECONDS rc=0 secs shown="" small
  if [[ $mode == small ]]; then
    small=$(small_env "$name")
    read -ra env <<<"$small"
    shown="${env[*]} "
  fi
  env+=("TESSERA_BENCH_POSTGRES=$pg_url")
  log "running $name"
  env "${env[@]}" cargo bench --locked "${cargo_profile[@]}" --bench "$name" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  secs=$((SECONDS - t0))
  cat "$work/$name.out" >&2
  {
    echo "#### $name: \`${shown}cargo bench${cargo_profile[*]:+ ${cargo_profile[*]}} --bench $name\` ($secs s)"
    echo
    cat "$work/$name.out"
    echo
  } >>"$section"
  if ((rc != 0)); then
    tail -n 30 "$work/$name.err" >&2
    log "FAILED: $name exited with $rc (its stderr is above)"
    failed+=("$name (exit $rc)")
    echo "**FAILED: exit status $rc.**" >>"$section"
    echo >>"$section"
  elif ! has_table_row "$work/$name.out"; then
    log "FAILED: $name printed no table row"
    failed+=("$name (no table row)")
    echo "**FAILED: no table row printed.**" >>"$section"
    echo >>"$section"
  else
    log "$name done in $secs s"
  fi
}

machine_line() {
  local cpu cores mem os gpu commit
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
  cores=$(nproc)
  mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null)
  os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ $mode == full ]]; then
    gpu="GPU $gpu_name, driver $gpu_driver, $gpu_memory"
  else
    gpu="GPU: none used (small mode)"
  fi
  echo "Machine: $gpu; Vulkan adapter \`$adapter_name\` ($adapter_backend, $adapter_type, $adapter_driver $adapter_driver_info), $adapter_timing timing; CPU ${cpu:-unknown}, $cores cores, ${mem:-? GiB}; ${os:-$(uname -s)}, Linux $(uname -r). Commit $commit; \`scripts/gpu-bench.sh --$mode\` (build $build_s s, benches $run_s s)."
}

main() {
  parse_args "$@"
  bash scripts/setup.sh --no-check-tools
  export PATH="$HOME/.cargo/bin:$PATH"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

  if [[ $mode == auto ]]; then
    if nvidia_smi_works; then mode=full; else mode=small; fi
    log "mode: $mode (auto-detected; --full or --small to choose)"
  fi
  if [[ $mode == full ]]; then
    cargo_profile=()
    profile_dir=release
    check_driver
    check_icd
  else
    # The dev profile reuses the test build's dependencies (opt-level 2).
    cargo_profile=(--profile dev)
    profile_dir=debug
  fi

  work=$(mktemp -d /tmp/tessera-gpu-bench.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  section=$work/section.md
  failed=()

  build
  read_adapter
  if [[ $mode == full ]]; then
    check_nvidia_adapter
  elif [[ "$adapter_type" != Cpu ]]; then
    log "note: small mode on a hardware adapter ($adapter_name); --full measures it at full sizes"
  fi
  start_postgres

  local t0=$SECONDS name
  : >"$section"
  for name in "${BENCHES[@]}"; do run_bench "$name"; done
  run_s=$((SECONDS - t0))
  stop_postgres

  local title=$adapter_name
  [[ $mode == full ]] && title=$gpu_name
  local final=$work/final.md
  {
    if [[ $mode == full ]]; then
      echo "### $title — $(date -u +%Y-%m-%d)"
    else
      echo "### $title — $(date -u +%Y-%m-%d) (small mode: toy sizes that check the benches run, not figures for BENCHMARKS.md)"
    fi
    echo
    machine_line
    echo
    cat "$section"
  } >"$final"
  mkdir -p "$(dirname "$out")"
  cp "$final" "$out"
  cat "$final"
  log "build $build_s s, benches $run_s s; written to $out"
  if ((${#failed[@]})); then
    die "${#failed[@]} bench(es) failed: ${failed[*]}"
  fi
}

# Sourced (to try a function alone), it only defines them.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
