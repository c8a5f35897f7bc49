#!/usr/bin/env bash
# Release builds carry no test-only store method: nothing that deletes or
# rewrites ledger rows (`tamper_with_ledger`), no fault injection, no clock set
# by hand, no unchecked enqueue. Two checks, neither needs a build:
# 1. the features a release build of `tessera` resolves (`cargo tree` without
#    dev-dependencies) include neither `testing` nor `fault-injection`;
# 2. every statement in the sources that updates or deletes `usage_events`
#    sits in a function compiled only with the `testing` feature.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
features=$(cargo tree -p tessera -e normal,features --prefix none --locked 2>/dev/null | grep -E '^tessera-[a-z]+ feature' | sort -u)
if grep -E 'feature "(testing|fault-injection)"' <<<"$features"; then
  echo "check-release-surface: a release build enables a test-only feature (above)" >&2
  fail=1
fi
# Each UPDATE/DELETE of the ledger, with the eight lines before it.
while IFS=: read -r file line _; do
  start=$((line > 8 ? line - 8 : 1))
  if ! sed -n "${start},${line}p" "$file" | grep -q 'cfg(feature = "testing")'; then
    echo "check-release-surface: $file:$line changes ledger rows outside #[cfg(feature = \"testing\")]" >&2
    fail=1
  fi
done < <(grep -rnE '(UPDATE|DELETE FROM) usage_events' --include='*.rs' store/src worker/src metering/src || true)
if [[ $fail -ne 0 ]]; then exit 1; fi
echo "check-release-surface: release builds have no test-only store method and no ledger rewrite"
