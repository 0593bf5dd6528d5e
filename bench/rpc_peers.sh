#!/usr/bin/env bash
# rpc_peers.sh [options] [BUILD_DIR]
#
# RPC round trips per second and their latency on loopback, one call in flight: cardnode's
# RPC (bench/rpc_roundtrip, sealed and plain) against gRPC C++ unary ping-pong over TLS and
# without it (bench/peers/grpc_pingpong, Debian's libgrpc++). Each program runs its own
# server in-process and prints one line:
#   cardnode mode=sealed|plain rate_per_s=N p50_us=X p99_us=Y calls=K
#   grpc mode=tls|plain rate_per_s=N p50_us=X p99_us=Y calls=K
# The four runs alternate, --rounds times (cardnode sealed, cardnode plain, gRPC tls, gRPC
# plain, then again), so a slow spell of the machine hits both sides. Prints a markdown
# table: per pairing (sealed vs gRPC TLS, plain vs gRPC plain) the median rate over the
# rounds, p50/p99 of that median round, and cardnode/gRPC, with the goal (>= 2x).
# If rpc_roundtrip is not there (no such target yet, or it does not build), the gRPC half
# still runs and the table says cardnode's side is missing.
#
# Installs libgrpc++-dev and protobuf-compiler-grpc if they are missing (apt-get; root or
# sudo), then configures BUILD_DIR again (so gRPC is found) and builds grpc_pingpong and
# rpc_roundtrip there.
#
# Options:
#   --seconds S      length of each run, the programs' 0.5 s warm-up included (5)
#   --rounds N       rounds of the four runs (3)
#   --cpus LIST      run every program under `taskset -c LIST` (e.g. 0: client and server
#                    threads share one CPU). On a VM a wake-up of a thread on another,
#                    idle vCPU can cost tens of µs, several per call, so placement can
#                    move both sides' rates by 3x; the same LIST applies to both sides.
#   --no-build       do not configure and build first
#   --no-install     do not apt-get install libgrpc++-dev, protobuf-compiler-grpc
# BUILD_DIR defaults to build/release (in the source tree).
#
# Environment: BUILD_JOBS (2).
set -euo pipefail

# shellcheck source=idle_rss.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle_rss.sh"

RP_DEPS=(libgrpc++-dev protobuf-compiler-grpc)
BUILD_JOBS=${BUILD_JOBS:-2}
BUILD_DIR=$PB_ROOT/build/release
SECONDS_PER=5
ROUNDS=3
CPUS=""             # --cpus: taskset -c CPUS for every run, or "" for none
DO_BUILD=1
DO_INSTALL=1
CN_MISSING=""        # why cardnode's side is not measured, if it is not

usage() { sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------
# setup

install_deps() { pb_install "${RP_DEPS[@]}"; }

# has_target NAME: the build tree knows a target NAME.
has_target() { cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep -q "^$1:"; }

build() {
  log "configuring $BUILD_DIR"
  if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    # Again, so that a libgrpc++-dev installed just now is found.
    cmake -S "$PB_ROOT" -B "$BUILD_DIR" >/dev/null
  else
    cmake -S "$PB_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  has_target grpc_pingpong || die "no grpc_pingpong target in $BUILD_DIR: cmake did not find gRPC C++ (see its 'bench:' message)"
  log "building grpc_pingpong in $BUILD_DIR"
  cmake --build "$BUILD_DIR" -j "$BUILD_JOBS" --target grpc_pingpong >&2 || die "building grpc_pingpong failed"
  if ! has_target rpc_roundtrip; then
    CN_MISSING="no rpc_roundtrip target in $BUILD_DIR yet"
  else
    log "building rpc_roundtrip in $BUILD_DIR"
    # A stale binary from an earlier build would not be today's code: a failed build
    # leaves cardnode's side out rather than measuring that.
    cmake --build "$BUILD_DIR" -j "$BUILD_JOBS" --target rpc_roundtrip >&2 \
      || CN_MISSING="rpc_roundtrip did not build (the compiler's output is above)"
  fi
}

# ---------------------------------------------------------------------------------------------
# helpers

# field LINE KEY: the value of KEY=VALUE in a result line, or "-".
field() { sed -n "s/.*[[:space:]]$2=\\([^[:space:]]*\\).*/\\1/p" <<<"$1" | grep . || echo -; }
fmt_int() { awk -v v="$1" 'BEGIN { if (v ~ /^[0-9.e+]+$/) printf "%.0f\n", v; else print "-" }'; }
# ratio A B: A/B with two decimals and an x, or "-".
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.e+]+$/ || b !~ /^[0-9.e+]+$/ || b + 0 == 0) { print "-"; exit }
    printf "%.2fx\n", a / b }'
}
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------------------------------------
# measurements

declare -A LINE      # LINE[tool:mode:round] = the program's result line ("" if it failed)
declare -a NOTES=()

# run_one TOOL MODE ROUND PROGRAM: one run; its result line into LINE, a note if it failed.
run_one() {
  local tool=$1 mode=$2 round=$3 prog=$4 out rc=0 err=$PB_TMP/$1-$2-$3.err
  log "round $round/$ROUNDS: $tool --mode $mode, $SECONDS_PER s"
  local pin=()
  [[ -z "$CPUS" ]] || pin=(taskset -c "$CPUS")
  out=$(timeout $((SECONDS_PER + 60)) "${pin[@]}" "$prog" --mode "$mode" --seconds "$SECONDS_PER" 2>"$err") || rc=$?
  LINE[$tool:$mode:$round]=$(grep -E "^$tool mode=$mode " <<<"$out" | tail -1 || true)
  if ((rc != 0)); then
    LINE[$tool:$mode:$round]=""
    NOTES+=("round $round, $tool $mode failed (exit $rc): $(tail -1 "$err")")
  elif [[ -z "${LINE[$tool:$mode:$round]}" ]]; then
    NOTES+=("round $round, $tool $mode: no '$tool mode=$mode ...' line in its output")
  fi
}

# median_round TOOL MODE: the round whose rate is the median of the rounds that gave a
# line (with an even count, the lower of the middle two); nothing if none did.
median_round() {
  local r rate rows=()
  for ((r = 1; r <= ROUNDS; r++)); do
    rate=$(field "${LINE[$1:$2:$r]:-}" rate_per_s)
    [[ "$rate" != - ]] && rows+=("$rate $r")
  done
  ((${#rows[@]})) || return 0
  printf '%s\n' "${rows[@]}" | sort -n -k1,1 | sed -n "$(((${#rows[@]} + 1) / 2))p" | cut -d' ' -f2
}

# ---------------------------------------------------------------------------------------------
# report

# cells TOOL MODE: "rate | p50 | p99" of the median round, or dashes.
cells() {
  local r line=""
  r=$(median_round "$1" "$2")
  [[ -z "$r" ]] || line=${LINE[$1:$2:$r]:-}
  echo "$(fmt_int "$(field "$line" rate_per_s)") | $(field "$line" p50_us) | $(field "$line" p99_us)"
}
median_rate() {
  local r
  r=$(median_round "$1" "$2")
  if [[ -n "$r" ]]; then field "${LINE[$1:$2:$r]:-}" rate_per_s; else echo -; fi
}

report() {
  local pair cn_mode g_mode label r t tool m cn_rate g_rate
  echo "rpc_peers: RPC round trips on loopback, one call in flight, one machine, same run"
  echo "machine: $(uname -m), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
  echo "load average: $LOAD_START at the start, $(load_avg) at the end"
  echo "gRPC: $(dpkg-query -W -f='libgrpc++ ${Version}' libgrpc++-dev 2>/dev/null || echo '?'), sync server in-process + sync stub, 64-byte payload, TLS 1.3 with a P-256 self-signed cert (tls)"
  if [[ -n "$CPUS" ]]; then
    echo "placement: every program under taskset -c $CPUS"
  else
    echo "placement: not pinned (the kernel places the threads; --cpus pins them)"
  fi
  echo "runs: $SECONDS_PER s each (0.5 s warm-up not counted), $ROUNDS rounds alternating; rate = median of the rounds, p50/p99 from that median round"
  [[ -z "$CN_MISSING" ]] || echo "cardnode's side is missing: $CN_MISSING"
  echo
  echo "| pairing | cardnode rate/s | p50 µs | p99 µs | gRPC rate/s | p50 µs | p99 µs | cardnode / gRPC | goal >= 2x |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for pair in "sealed tls" "plain plain"; do
    read -r cn_mode g_mode <<<"$pair"
    label="cardnode $cn_mode vs gRPC $g_mode"
    cn_rate=$(median_rate cardnode "$cn_mode")
    g_rate=$(median_rate grpc "$g_mode")
    echo "| $label | $(cells cardnode "$cn_mode") | $(cells grpc "$g_mode") | $(ratio "$cn_rate" "$g_rate") | $(
      awk -v a="$cn_rate" -v b="$g_rate" 'BEGIN {
        if (a !~ /^[0-9.e+]+$/ || b !~ /^[0-9.e+]+$/ || b + 0 == 0) print "not measured"
        else print (a / b >= 2 ? "met" : "missed") }') |"
  done
  if [[ -n "${LINE[cardnode:floor:1]:-}" ]]; then
    echo
    echo "floor, same placement (two threads, 64 bytes each way over blocking TCP on loopback, no protocol): $(field "${LINE[cardnode:floor:1]}" rate_per_s)/s, p50 $(field "${LINE[cardnode:floor:1]}" p50_us) µs"
  fi
  echo
  echo "every run:"
  echo
  for ((r = 1; r <= ROUNDS; r++)); do
    for t in "cardnode sealed" "cardnode plain" "grpc tls" "grpc plain"; do
      read -r tool m <<<"$t"
      [[ "$tool" == cardnode && -n "$CN_MISSING" ]] && continue
      echo "    round $r: ${LINE[$tool:$m:$r]:-$tool mode=$m (no result)}"
    done
  done
  if ((${#NOTES[@]})); then
    echo
    printf 'note: %s\n' "${NOTES[@]}"
  fi
}

# ---------------------------------------------------------------------------------------------

LOAD_START=""

rp_main() {
  local args=() v r cn_bin g_bin
  while (($#)); do
    case $1 in
      --seconds) SECONDS_PER=$2; shift ;;
      --rounds) ROUNDS=$2; shift ;;
      --cpus) CPUS=$2; shift ;;
      --no-build) DO_BUILD=0 ;;
      --no-install) DO_INSTALL=0 ;;
      -h|--help) usage; exit 0 ;;
      -*) die "unknown option $1 (see $0 --help)" ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  ((${#args[@]} <= 1)) || die "usage: $0 [options] [BUILD_DIR]"
  for v in "$SECONDS_PER" "$ROUNDS"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "numbers must be positive integers, got '$v'"
  done
  [[ -z "$CPUS" ]] || taskset -c "$CPUS" true 2>/dev/null || die "--cpus $CPUS: taskset cannot use that CPU list"
  [[ -z "${args[0]:-}" ]] || BUILD_DIR=$(realpath -m "${args[0]}")

  ((DO_INSTALL)) && install_deps
  if ((DO_BUILD)); then
    build
  elif [[ ! -x "$BUILD_DIR/bench/rpc_roundtrip" ]]; then
    CN_MISSING="no $BUILD_DIR/bench/rpc_roundtrip"
  fi
  g_bin=$BUILD_DIR/bench/grpc_pingpong
  cn_bin=$BUILD_DIR/bench/rpc_roundtrip
  [[ -x "$g_bin" ]] || die "no grpc_pingpong at $g_bin (needs libgrpc++-dev and protobuf-compiler-grpc at configure time)"
  [[ -z "$CN_MISSING" ]] || log "warning: cardnode's side is missing ($CN_MISSING): running the gRPC half only"

  pb_init
  LOAD_START=$(load_avg)
  log "load average $LOAD_START"
  if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l >= n / 4) }'; then
    log "warning: the machine is busy (load $LOAD_START on $(nproc) CPUs): the figures will be noisy"
  fi

  for ((r = 1; r <= ROUNDS; r++)); do
    if [[ -z "$CN_MISSING" ]]; then
      run_one cardnode sealed "$r" "$cn_bin"
      run_one cardnode plain "$r" "$cn_bin"
    fi
    run_one grpc tls "$r" "$g_bin"
    run_one grpc plain "$r" "$g_bin"
  done
  # The floor of any two-thread ping-pong on this machine and placement: no protocol at all.
  [[ -n "$CN_MISSING" ]] || run_one cardnode floor 1 "$cn_bin"
  report
}

rp_main "$@"
