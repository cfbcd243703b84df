#!/usr/bin/env bash
# The long fuzz run of issue #12: every target in tests/it/fuzz.rs (DHCP decoder and responder,
# TFTP requests, fleet files, fact lines, machine API bodies) with 100,000 cases each, in a
# release build that keeps debug assertions and overflow checks on, so that a `debug_assert!`
# in a dependency (dhcproto has several) or an arithmetic overflow anywhere counts as a crash,
# as in the debug build CI runs.
#
#   examples/fuzz-long.sh                         # 100,000 cases per target
#   FLEET_FUZZ_CASES=1000000 examples/fuzz-long.sh
#   FLEET_FUZZ_CASES_DHCP=500000 examples/fuzz-long.sh fuzz::dhcp   # one target, its own count
#
# Each target prints "fuzz TARGET: N cases executed ... in T"; the run fails on the first
# failing case, shrunk, with its seed kept in tests/it/fuzz.proptest-regressions.
# A case that runs past 60 s aborts the run with its input (a hang).
set -euo pipefail
cd "$(dirname "$0")/.."
export FLEET_FUZZ_CASES=${FLEET_FUZZ_CASES:-100000}
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
filter=${1:-fuzz::}
cargo test --release --locked --test it -- "$filter" --nocapture \
    --test-threads="${FLEET_FUZZ_THREADS:-2}"
