# Sourced by scripts/test, scripts/bench and scripts/run: what they share.
# shellcheck shell=bash

REPO=${REPO:-$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)}

# lab_up CLUSTER: starts the bundled lab's CLUSTER (rabbit, activemq, all) unless it already
# runs, and stops it again when the calling script exits, but only if it was started here: a
# developer's running lab is left alone.
lab_up() {
    local cluster=$1
    if "$REPO/scripts/cluster" status "$cluster" >/dev/null 2>&1; then
        return 0
    fi
    LAB_STARTED_HERE=$cluster
    trap lab_down_if_started_here EXIT
    "$REPO/scripts/cluster" up "$cluster"
}

lab_down_if_started_here() {
    if [[ -n ${LAB_STARTED_HERE:-} ]]; then
        "$REPO/scripts/cluster" down "$LAB_STARTED_HERE" || true
    fi
}

# failure_digest: reads cargo test's output and prints each failed test's name and message
# (libtest's and libtest-mimic's "failures:" sections), bounded per test.
failure_digest() {
    awk '
        /^failures:$/ { in_block = !in_block; next }
        !in_block { next }
        /^---- .* ----$/ { print; shown = 0; after_panic = 0; next }
        /panicked/ { print; after_panic = 6; next }
        after_panic > 0 { print; after_panic--; next }
        shown < 8 { print; shown++ }
    '
}
