#!/usr/bin/env bash
# Prism's whole test run against real local servers: install (cached), start
# the servers, check they behave as Prism expects, then fmt, clippy and the
# workspace tests. Runs every check even after a failure; exits non-zero if
# any failed. Servers this run started are stopped on exit.
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PRISM_HOME/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
SERVERS="$LOCAL_DIR/servers.sh"

"$LOCAL_DIR/install.sh"

# Leave alone the servers a developer already had running.
already_up=()
mapfile -t already_up < <("$SERVERS" status 2>/dev/null | awk '$2 == "up" {print $1}')
stop_started_servers() {
    local name to_stop=()
    for name in s3 couchdb kafka; do
        [[ " ${already_up[*]} " == *" $name "* ]] || to_stop+=("$name")
    done
    ((${#to_stop[@]} == 0)) || "$SERVERS" stop "${to_stop[@]}"
}
trap stop_started_servers EXIT
"$SERVERS" start
eval "$("$SERVERS" env)"

failed=()
summary=()
run_check() {
    local name=$1 started=$SECONDS
    shift
    say "=== $name: $*"
    if "$@"; then
        summary+=("ok      $name ($((SECONDS - started))s)")
    else
        summary+=("FAILED  $name ($((SECONDS - started))s)")
        failed+=("$name")
    fi
}

run_check "server conformance" "$VENV/bin/python" "$LOCAL_DIR/probe.py" conformance
run_check "cargo fmt" cargo fmt --all --check
run_check "cargo clippy" cargo clippy --workspace --all-targets --features prism-e2e/e2e,prism-detect/weights,prism-classify/weights -- -D warnings
# The fault and rebalance tests run on their own, so their times show in the summary and the
# figures they print (uploads, results, redeliveries, recovery times) show in the log.
# The end-to-end tests (tests/, package prism-e2e) and the detector's and classifier's tests on
# the real weights (the classifier's against onnxruntime) are built only with these features.
run_check "cargo test" cargo test --workspace --features prism-e2e/e2e,prism-detect/weights,prism-classify/weights \
    -- --skip under_faults --skip under_rebalance
# Each waits at most 3 minutes for results, but a test stuck elsewhere must not hold CI for hours
# (the fault test takes ~5 minutes on a quiet machine, 14 under heavy load).
run_check "fault test" timeout --kill-after=30 1500 cargo test -p prism-e2e --features e2e --test faults -- --show-output
run_check "rebalance test" timeout --kill-after=30 600 cargo test -p prism-e2e --features e2e --test rebalance -- --show-output
run_check "deployment validation" bash deploy/validate.sh

say "=== summary"
printf '[prism]   %s\n' "${summary[@]}" >&2
if ((${#failed[@]})); then
    die "failed: ${failed[*]}"
fi
say "all checks passed"
