#!/usr/bin/env bash
# bench-suite.sh -- issue 15's benchmark suite in one run, printed as one table.
#
#   examples/bench-suite.sh [--peers] [--quick]
#
# Builds release and runs, one after the other (never in parallel: they share the cores):
#   fleet bench plan      --machines 1000 / 10000 / 100000
#   fleet bench lifecycle --machines 1000 / 10000, on SQLite, on PostgreSQL with one controller
#                         and with three (--controllers 3, each the boot server of a third)
#   fleet bench deploy    --machines 1000
# and with --peers the DHCP/TFTP comparison with Kea, dnsmasq, tftpd-hpa and atftpd through
# ../shared/bench/peer-baselines.sh (needs root: network namespaces), with fleet's
# examples/dhcp-bench-server and examples/tftp-bench-server plugged in as DHCP_EXTRA/TFTP_EXTRA.
# --quick: 1,000 machines only for the life-cycle, 200 for deploy, and QUICK=1 for the peers.
#
# Knobs (environment):
#   FLEET_BENCH_POSTGRES  an administrator's URL; each run creates (and drops) a fresh database
#                         [postgres://fleet_test:fleet_test@127.0.0.1:5432/postgres]
#   PEER_BASELINES        the peer script [../shared/bench/peer-baselines.sh from the repo]
#   BENCH_LOG_DIR         where each command's full output goes [a new temporary directory]
#
#   PEER_TFTP_RUNS        runs of the peer script's TFTP part, one repetition each [5; 2 with --quick]
#
# Not part of the tests: it takes minutes (the peers ~40 more). Every figure is printed with
# the load average of its run: other work on the machine shows there.
set -uo pipefail

cd "$(dirname "$0")/.."
PEERS=0; QUICK=0
for argument in "$@"; do
  case "$argument" in
    --peers) PEERS=1 ;;
    --quick) QUICK=1 ;;
    *) echo "usage: $0 [--peers] [--quick]" >&2; exit 2 ;;
  esac
done
POSTGRES=${FLEET_BENCH_POSTGRES:-postgres://fleet_test:fleet_test@127.0.0.1:5432/postgres}
PEER_BASELINES=${PEER_BASELINES:-$(pwd)/../shared/bench/peer-baselines.sh}
LOGS=${BENCH_LOG_DIR:-$(mktemp -d -t fleet-bench-suite.XXXXXX)}
mkdir -p "$LOGS"
FLEET=target/release/fleet

echo "== building release (logs in $LOGS)"
cargo build --release --bin fleet >"$LOGS/build.log" 2>&1 || { tail -20 "$LOGS/build.log"; exit 1; }
if [ "$PEERS" = 1 ]; then
  cargo build --release --example dhcp-bench-server --example tftp-bench-server \
    >>"$LOGS/build.log" 2>&1 || { tail -20 "$LOGS/build.log"; exit 1; }
fi

ROWS=()   # one line per measurement: NAME|FIGURES

# field TEXT REGEX: the first match of REGEX (grep -oE) in TEXT, or "?".
field() { grep -oE "$2" <<<"$1" | head -1 || true; }

run_plan() {
  local machines=$1 log="$LOGS/plan-$1.log"
  echo "== fleet bench plan --machines $machines"
  "$FLEET" bench plan --machines "$machines" >"$log" 2>&1
  local line; line=$(grep '^bench plan' "$log")
  ROWS+=("plan $machines|wall $(field "$line" 'median [0-9.]+ s' | cut -d' ' -f2) s, CPU $(field "$line" 'CPU [0-9.]+ s' | cut -d' ' -f2) s, peak $(field "$line" 'peak RSS [0-9]+ MiB' | cut -d' ' -f3) MiB|load $(field "$line" 'load [0-9.]+' | cut -d' ' -f2)|$(field "$line" '(NOT met|met|the command failed)$')")
}

# run_lifecycle KIND MACHINES BACKEND [CONTROLLERS]: KIND is lifecycle or deploy; BACKEND
# sqlite or postgres; CONTROLLERS (postgres, lifecycle only) the `fleet serve` sharing the
# database [1]. The PostgreSQL rows name their controllers, so 1 and 3 read side by side.
run_lifecycle() {
  local kind=$1 machines=$2 backend=$3 controllers=${4:-1}
  local log="$LOGS/$1-$2-$3-$controllers.log" name="$1 $2 $3"
  local database=()
  if [ "$backend" = postgres ]; then
    database=(--database "$POSTGRES")
    [ "$controllers" = 1 ] || database+=(--controllers "$controllers")
    name="$name, $controllers controller$([ "$controllers" = 1 ] || echo s)"
  fi
  echo "== fleet bench $kind --machines $machines ${database[*]}"
  "$FLEET" bench "$kind" --machines "$machines" "${database[@]}" >"$log" 2>&1
  local text; text=$(cat "$log")
  local figures
  local peak="controller peak"
  [ "$controllers" = 1 ] || peak="controllers' peaks summed"
  figures="$(field "$text" '[0-9]+ of [0-9]+ ready'), $(field "$text" '[0-9.]+ machines per second'), wall $(field "$text" 'wall [0-9.]+ s' | cut -d' ' -f2) s, $peak $(field "$text" 'VmHWM\) [0-9]+ MiB' | cut -d' ' -f2) MiB, $(field "$text" '[0-9.]+ ms per machine') CPU"
  [ "$controllers" = 1 ] || figures="$figures, $(field "$text" 'led by: controller [0-9]+' | sed 's/: / /')"
  if [ "$kind" = deploy ]; then
    figures="$figures; $(field "$text" '[0-9]+ of [0-9]+ deployed'), $(field "$text" '[0-9.]+ MiB/s of image served')"
  fi
  local load; load=$(field "$text" '[0-9.]+ [0-9.]+ [0-9.]+ after' | cut -d' ' -f1)
  ROWS+=("$name|$figures|load $load|$(field "$text" '(NOT met.*|met)$')")
}

# The peer script runs each server's repetitions one after another; for TFTP it is run
# PEER_TFTP_RUNS times with one repetition each instead, so every server's repetitions are
# interleaved in time, and examples/peer-ratios.py prints each row's median against the best peer.
run_peers() {
  echo "== peer-baselines.sh with fleet's DHCP and TFTP servers (needs root)"
  local root; root=$(pwd)
  local quick=() runs=${PEER_TFTP_RUNS:-5} run results=()
  [ "$QUICK" = 1 ] && { quick=(QUICK=1); runs=${PEER_TFTP_RUNS:-2}; }
  env "${quick[@]}" PB_DIR="$LOGS/peers" SKIP_TFTP=1 \
    DHCP_EXTRA_NAME=fleet \
    DHCP_EXTRA_CMD="exec $root/target/release/examples/dhcp-bench-server --interface \"\$PB_IFACE\" --server-ip \"\$PB_SRV_IP\" --prefix \"\$PB_PREFIX\" --pool-start \"\$PB_POOL_START\" --pool-end \"\$PB_POOL_END\" --state-dir \"\$PB_STATE_DIR\"" \
    bash "$PEER_BASELINES" >"$LOGS/peers-dhcp.log" 2>&1
  for run in $(seq "$runs"); do
    echo "   TFTP run $run of $runs"
    env "${quick[@]}" PB_DIR="$LOGS/peers" SKIP_DHCP=1 TFTP_REPS=1 \
      TFTP_EXTRA_NAME=fleet \
      TFTP_EXTRA_CMD="exec $root/target/release/examples/tftp-bench-server --root \"\$PB_TFTP_ROOT\"" \
      bash "$PEER_BASELINES" >"$LOGS/peers-tftp-$run.log" 2>&1
    # The newest run's directory (named by its time; results/latest is a link that moves on).
    results+=("$(ls -td "$LOGS"/peers/results/2*/ | head -1)results.jsonl")
  done
  python3 examples/peer-ratios.py "${results[@]}" >"$LOGS/peers-tftp-ratios.txt" 2>&1
  cat "$LOGS/peers-tftp-ratios.txt"
  ROWS+=("peers DHCP|see the summary at the end of $LOGS/peers-dhcp.log|load $(cut -d' ' -f1 /proc/loadavg)|")
  ROWS+=("peers TFTP, $runs interleaved runs|$(tail -1 "$LOGS/peers-tftp-ratios.txt") ($LOGS/peers-tftp-ratios.txt)|load $(cut -d' ' -f1 /proc/loadavg)|")
}

for machines in 1000 10000 100000; do run_plan "$machines"; done
LIFECYCLE_SIZES="1000 10000"
DEPLOY_SIZE=1000
if [ "$QUICK" = 1 ]; then LIFECYCLE_SIZES=1000; DEPLOY_SIZE=200; fi
for machines in $LIFECYCLE_SIZES; do
  run_lifecycle lifecycle "$machines" sqlite
  run_lifecycle lifecycle "$machines" postgres 1
  run_lifecycle lifecycle "$machines" postgres 3
done
run_lifecycle deploy "$DEPLOY_SIZE" sqlite
[ "$PEERS" = 1 ] && run_peers

echo
echo "fleet benchmark suite, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD)"
{
  echo "MEASUREMENT|FIGURES|LOAD (1 min, after)|TARGET"
  for row in "${ROWS[@]}"; do echo "$row"; done
} | column -t -s '|'
echo
echo "Full outputs (settings, phases, CPU by thread): $LOGS"
