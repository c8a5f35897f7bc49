#!/usr/bin/env bash
# Checks what deploys tessera, offline, with the tools scripts/setup.sh pins in
# target/st-venv: hadolint on the Dockerfile (failing at warning level), and
# scripts/check-manifests.py on deploy/kubernetes (every resource against the
# Kubernetes schemas in strict mode, the ServiceMonitor against its CRD's
# fields, the kustomizations complete, Secrets, selectors and ports that
# refer to each other consistent). Ends with a one-line summary; exits 1 when
# anything fails. `scripts/test.sh` runs it right after clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/st-venv
for tool in hadolint kubernetes-validate; do
  if [[ ! -x "$venv/bin/$tool" ]]; then
    echo "check-deploy: $tool is missing from $venv; run scripts/setup.sh" >&2
    exit 1
  fi
done

failed=()
if ! "$venv/bin/hadolint" --failure-threshold warning Dockerfile; then
  failed+=(Dockerfile)
fi
manifests=$("$venv/bin/python" scripts/check-manifests.py) || failed+=(manifests)
# Its problems (if any), then its summary as part of ours.
grep -v '^manifests: ' <<<"$manifests" || true
summary=$(grep '^manifests: ' <<<"$manifests" || echo "manifests: no summary")
hadolint_version=$("$venv/bin/hadolint" --version | awk '{print $NF}')
if ((${#failed[@]})); then
  echo "check-deploy: FAILED (${failed[*]}); hadolint $hadolint_version; $summary"
  exit 1
fi
echo "check-deploy: ok: Dockerfile clean at warning level (hadolint $hadolint_version); $summary"
