#!/usr/bin/env bash
# storage_peers.sh [options] [CARDNODE_BIN]
#
# Durable writes on one filesystem, same run, one after another:
#   - fio: 4k sequential writes with an fdatasync after each (one job) into a fresh file,
#     as the issue asks; then, for context, the same over already-written blocks;
#   - SQLite: WAL mode, synchronous=FULL, one INSERT of a 100-byte record per transaction,
#     1/8/64 threads with a connection each (bench/peers/sqlite_commit), a fresh db per row;
#   - cardnode: durable submits through the real RPC path into `cardnode server --no-exec`,
#     1/8/64 submitters with a connection each (bench/submit_bench), a fresh server per row;
#     and the RPC round trip alone (ListNodes), to set beside a single submit;
# then the bytes the last row's server, holding at least --idle-jobs queued jobs, writes in
# an idle window (/proc/PID/io write_bytes and its own cardnode_storage_bytes_written_total).
# Prints markdown tables. The cardnode data dirs, fio's files and the SQLite databases all
# live in one temp dir, so on one filesystem. Installs fio, libsqlite3-dev and jq if they
# are missing (apt-get; root or sudo), and builds the programs in the Release tree.
#
# Options:
#   --seconds S          length of each measurement (10)
#   --idle-seconds S     the idle window (60)
#   --idle-jobs N        jobs the idle server holds at least (20000)
#   --row-cap N          most submits per cardnode row (90000): a --no-exec server keeps
#                        every job queued and refuses more than 100,000 unfinished jobs
#   --writers "1 8 64"   the rows
#   --dir DIR            where the temp dir goes (${TMPDIR:-/tmp}): the filesystem under test
#   --fio-size SIZE      fio's file (1G; large enough that fio does not wrap around it)
#   --submit-bench PATH, --sqlite-commit PATH   the programs (default: BUILD_DIR/bench/...)
#   --no-build           do not run cmake --build first
#   --no-install         do not apt-get install fio, libsqlite3-dev, jq when missing
# CARDNODE_BIN defaults to BUILD_DIR/cli/cardnode.
#
# Environment: BUILD_DIR (build/release), BUILD_JOBS (2), KEEP_TMP=1 keeps the temp dir
# (the servers' data dirs and logs, fio's JSON).
set -euo pipefail

# shellcheck source=idle_rss.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle_rss.sh"

SP_DEPS=(fio libsqlite3-dev jq)
BUILD_DIR=${BUILD_DIR:-$PB_ROOT/build/release}
BUILD_JOBS=${BUILD_JOBS:-2}

SECONDS_PER=10
IDLE_SECONDS=60
IDLE_JOBS=20000
ROW_CAP=90000
WRITERS=(1 8 64)
FIO_SIZE=1G
SUBMIT_BENCH=""
SQLITE_COMMIT=""
DO_BUILD=1
DO_INSTALL=1
QUIET_LIMIT=120      # seconds to wait for the server to stop writing before the idle window
QUIET_STABLE=5       # ... as this many seconds in a row without a new byte

usage() { sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------
# setup

install_deps() { pb_install "${SP_DEPS[@]}"; }

build() {
  log "building cardnode submit_bench sqlite_commit in $BUILD_DIR"
  if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    # Again, so that a libsqlite3-dev installed just now is found.
    cmake -S "$PB_ROOT" -B "$BUILD_DIR" >/dev/null
  else
    cmake -S "$PB_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  cmake --build "$BUILD_DIR" -j "$BUILD_JOBS" --target cardnode submit_bench sqlite_commit >&2 \
    || die "build failed"
}

# ---------------------------------------------------------------------------------------------
# helpers

# field LINE KEY: the value of KEY=VALUE in a `result` line, or "-".
field() { sed -n "s/.*[[:space:]]$2=\\([^[:space:]]*\\).*/\\1/p" <<<"$1" | grep . || echo -; }

# fmt_ms MICROSECONDS: milliseconds with three decimals.
fmt_ms() { awk -v u="$1" 'BEGIN { if (u ~ /^[0-9.]+$/) printf "%.3f\n", u / 1000; else print "-" }'; }
fmt_int() { awk -v v="$1" 'BEGIN { if (v ~ /^[0-9.e+]+$/) printf "%.0f\n", v; else print "-" }'; }
# ratio A B: A/B with two decimals and an x, or "-".
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.e+]+$/ || b !~ /^[0-9.e+]+$/ || b + 0 == 0) { print "-"; exit }
    printf "%.2fx\n", a / b }'
}

# scrape FILE: /metrics of the current server into FILE (plain HTTP/1.0, bounded).
scrape() {
  local addr host port
  addr=$(head -1 "$CN_DIR/metrics_addr")
  host=${addr%:*}
  port=${addr##*:}
  [[ -n "$host" ]] || host=127.0.0.1
  # shellcheck disable=SC2016  # $0 and $1 are the inner shell's
  timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n" >&3 && cat <&3' \
    "$host" "$port" >"$1" || die "cannot scrape http://$addr/metrics"
}
# metric FILE NAME: the value of an unlabelled sample, or "-".
metric() { awk -v n="$2" '$1 == n { printf "%.0f\n", $2; found = 1 } END { if (!found) print "-" }' "$1"; }
# delta A B: B-A, or "-".
delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) print b - a; else print "-" }'; }

# write_bytes PID: bytes this process caused to be written to storage (/proc/PID/io).
write_bytes() { awk '$1 == "write_bytes:" { print $2 }' "/proc/$1/io"; }

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

wait_metrics_addr() {
  local i
  for ((i = 0; i < 200; i++)); do
    [[ -s "$CN_DIR/metrics_addr" ]] && return 0
    sleep 0.05
  done
  die "the server wrote no $CN_DIR/metrics_addr within 10 s"
}

# ---------------------------------------------------------------------------------------------
# measurements

FIO_SYNC_P50="-" FIO_SYNC_P99="-" FIO_IOPS="-" FIO_WRITE_P50="-" FIO_NOTE=""
FIO_OW_SYNC_P50="-" FIO_OW_SYNC_P99="-" FIO_OW_IOPS="-"

# run_fio NAME EXTRA_ARGS...: fio's 4k write + fdatasync job for SECONDS_PER, JSON in
# PB_TMP/NAME.json.
run_fio() {
  local name=$1 dir=$PB_TMP/fio
  shift
  mkdir -p "$dir"
  timeout $((SECONDS_PER + 300)) fio --name=wal --rw=write --bs=4k --fdatasync=1 \
    --directory="$dir" --runtime="$SECONDS_PER" --time_based "$@" \
    --output-format=json --output="$PB_TMP/$name.json" >&2 || die "fio $* failed"
  rm -rf "$dir"
}
# fio_us NAME JQ_PATH: a latency in ns from NAME.json, in microseconds.
fio_us() { jq -r "$2 / 1000" "$PB_TMP/$1.json"; }

bench_fio() {
  local io_bytes size_bytes
  log "fio: 4k write + fdatasync into a fresh $FIO_SIZE file, $SECONDS_PER s"
  run_fio fio --size="$FIO_SIZE"
  FIO_SYNC_P50=$(fio_us fio '.jobs[0].sync.lat_ns.percentile["50.000000"]')
  FIO_SYNC_P99=$(fio_us fio '.jobs[0].sync.lat_ns.percentile["99.000000"]')
  FIO_WRITE_P50=$(fio_us fio '.jobs[0].write.clat_ns.percentile["50.000000"]')
  FIO_IOPS=$(jq -r '.jobs[0].write.iops' "$PB_TMP/fio.json")
  io_bytes=$(jq -r '.jobs[0].write.io_bytes' "$PB_TMP/fio.json")
  size_bytes=$(numfmt --from=iec "$FIO_SIZE" 2>/dev/null || echo 0)
  if ((size_bytes > 0 && io_bytes > size_bytes)); then
    FIO_NOTE="fio wrapped around its $FIO_SIZE file (wrote $((io_bytes >> 20)) MiB): later passes overwrite written blocks, which syncs cheaper; raise --fio-size"
  fi
  # Context, not the issue's floor: the same job over blocks already written (fio lays
  # the file out first), so an fdatasync flushes data and commits no extent change.
  log "fio: the same over already-written blocks (--overwrite=1 --size=64M), $SECONDS_PER s"
  run_fio fio-overwrite --size=64M --overwrite=1
  FIO_OW_SYNC_P50=$(fio_us fio-overwrite '.jobs[0].sync.lat_ns.percentile["50.000000"]')
  FIO_OW_SYNC_P99=$(fio_us fio-overwrite '.jobs[0].sync.lat_ns.percentile["99.000000"]')
  FIO_OW_IOPS=$(jq -r '.jobs[0].write.iops' "$PB_TMP/fio-overwrite.json")
}

declare -A SQ_LINE CN_LINE CN_PER_SYNC CN_WAL_BYTES

bench_sqlite() {
  local w=$1 dir=$PB_TMP/sqlite
  mkdir -p "$dir"
  log "sqlite: $w threads, $SECONDS_PER s"
  SQ_LINE[$w]=$(timeout $((SECONDS_PER * 3 + 120)) "$SQLITE_COMMIT" --db "$dir/w$w.db" \
    --threads "$w" --seconds "$SECONDS_PER") || die "sqlite_commit --threads $w failed"
  rm -f "$dir/w$w.db" "$dir/w$w.db-wal" "$dir/w$w.db-shm"
}

CN_RPC_LINE=""

# bench_cardnode W: a fresh --no-exec server, W submitters; the server keeps running
# (stopped by the next start, or used for the idle window after the last row).
bench_cardnode() {
  local w=$1 before=$PB_TMP/m.before after=$PB_TMP/m.after fs rec
  cardnode_stop
  cardnode_start --no-exec
  wait_metrics_addr
  if [[ $w == 1 && -z "$CN_RPC_LINE" ]]; then
    log "cardnode: RPC round trip without a write (ListNodes), 1 client, 3 s"
    CN_RPC_LINE=$(timeout 60 "$SUBMIT_BENCH" --data-dir "$CN_DIR" --probe-rpc --seconds 3) \
      || die "submit_bench --probe-rpc failed"
  fi
  scrape "$before"
  log "cardnode: $w submitters, $SECONDS_PER s or $ROW_CAP submits"
  CN_LINE[$w]=$(timeout $((SECONDS_PER + 120)) "$SUBMIT_BENCH" --data-dir "$CN_DIR" \
    --submitters "$w" --seconds "$SECONDS_PER" --count "$ROW_CAP") \
    || die "submit_bench --submitters $w failed (server log: $CN_DIR.out)"
  scrape "$after"
  fs=$(delta "$(metric "$before" cardnode_storage_fsyncs_total)" "$(metric "$after" cardnode_storage_fsyncs_total)")
  rec=$(delta "$(metric "$before" cardnode_wal_records_total)" "$(metric "$after" cardnode_wal_records_total)")
  CN_PER_SYNC[$w]=$(awk -v r="$rec" -v f="$fs" 'BEGIN { if (f ~ /^[0-9]+$/ && f > 0 && r ~ /^[0-9]+$/) printf "%.1f\n", r / f; else print "-" }')
  CN_WAL_BYTES[$w]=$(delta "$(metric "$before" cardnode_storage_bytes_written_total)" "$(metric "$after" cardnode_storage_bytes_written_total)")
}

IDLE_JOBS_HELD="-" IDLE_IO="-" IDLE_METRIC="-" IDLE_RSS="-" IDLE_NOTE=""

bench_idle() {
  local held need m0=$PB_TMP/m.idle0 m1=$PB_TMP/m.idle1 prev cur stable=0 i io0 io1
  scrape "$m0"
  held=$(metric "$m0" cardnode_jobs_submitted_total)
  [[ "$held" =~ ^[0-9]+$ ]] || held=0
  if ((held < IDLE_JOBS)); then
    need=$((IDLE_JOBS - held))
    log "idle: submitting $need more jobs, to hold $IDLE_JOBS"
    timeout 300 "$SUBMIT_BENCH" --data-dir "$CN_DIR" --submitters 8 --count "$need" >/dev/null \
      || die "submit_bench --count $need failed"
  fi
  scrape "$m0"
  IDLE_JOBS_HELD=$(metric "$m0" cardnode_jobs_submitted_total)

  log "idle: waiting for the server to stop writing ($QUIET_STABLE s without a new byte, at most $QUIET_LIMIT s)"
  prev=$(write_bytes "$PB_CN_PID")
  for ((i = 0; i < QUIET_LIMIT && stable < QUIET_STABLE; i++)); do
    sleep 1
    cur=$(write_bytes "$PB_CN_PID")
    if [[ "$cur" == "$prev" ]]; then stable=$((stable + 1)); else stable=0; fi
    prev=$cur
  done
  ((stable >= QUIET_STABLE)) || IDLE_NOTE="the server still wrote in its last second after $QUIET_LIMIT s of waiting"

  log "idle: $IDLE_SECONDS s window"
  io0=$(write_bytes "$PB_CN_PID")
  scrape "$m0"
  sleep "$IDLE_SECONDS"
  io1=$(write_bytes "$PB_CN_PID")
  scrape "$m1"
  IDLE_IO=$(delta "$io0" "$io1")
  IDLE_METRIC=$(delta "$(metric "$m0" cardnode_storage_bytes_written_total)" "$(metric "$m1" cardnode_storage_bytes_written_total)")
  IDLE_RSS=$(rss_kb "$PB_CN_PID" VmRSS)
}

# ---------------------------------------------------------------------------------------------
# report

report() {
  local fs_line w sq cn row1 first=1 rpc_p50 sub_p50
  fs_line=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$PB_TMP" 2>/dev/null || df -T "$PB_TMP" | tail -1)
  echo "storage_peers: durable writes on one filesystem, one machine, same run"
  echo "machine: $(uname -m), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
  echo "filesystem: $fs_line ($PB_TMP)"
  echo "load average: $LOAD_START at the start, $(load_avg) at the end"
  echo "cardnode: $CN_BIN, server --no-exec, fresh data dir per row; submit_bench: one-task jobs of \`true\`"
  echo "sqlite:   $(dpkg-query -W -f='libsqlite3-0 ${Version}' libsqlite3-0 2>/dev/null || echo '?'), WAL, synchronous=FULL, BEGIN IMMEDIATE + one 100-byte INSERT + COMMIT, fresh db per row"
  echo "fio:      $(fio --version), --rw=write --bs=4k --fdatasync=1 --size=$FIO_SIZE, one job"
  echo "each row: $SECONDS_PER s (cardnode rows also stop at $ROW_CAP submits)"
  echo
  echo "| writers | cardnode submits/s | p50 ms | p99 ms | WAL records per fdatasync | SQLite commits/s | p50 ms | p99 ms | cardnode / SQLite | fio fdatasync p50 ms | fio 4k write IOPS | cardnode p50 / fio fdatasync p50 |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for w in "${WRITERS[@]}"; do
    cn=${CN_LINE[$w]}
    sq=${SQ_LINE[$w]}
    if ((first)); then
      row1="| $(fmt_ms "$FIO_SYNC_P50") | $(fmt_int "$FIO_IOPS") | $(ratio "$(field "$cn" p50_us)" "$FIO_SYNC_P50") |"
    else
      row1="| – | – | – |"
    fi
    first=0
    echo "| $w | $(fmt_int "$(field "$cn" ops_per_s)") | $(fmt_ms "$(field "$cn" p50_us)") | $(fmt_ms "$(field "$cn" p99_us)") | ${CN_PER_SYNC[$w]} | $(fmt_int "$(field "$sq" ops_per_s)") | $(fmt_ms "$(field "$sq" p50_us)") | $(fmt_ms "$(field "$sq" p99_us)") | $(ratio "$(field "$cn" ops_per_s)" "$(field "$sq" ops_per_s)") $row1"
  done
  echo
  echo "fio, one writer (the fio columns of the first row): fdatasync p50 $(fmt_ms "$FIO_SYNC_P50") ms, p99 $(fmt_ms "$FIO_SYNC_P99") ms; the 4k write before it p50 $(fmt_ms "$FIO_WRITE_P50") ms"
  echo "fio over already-written blocks (--overwrite=1, no extent to convert): fdatasync p50 $(fmt_ms "$FIO_OW_SYNC_P50") ms, p99 $(fmt_ms "$FIO_OW_SYNC_P99") ms, $(fmt_int "$FIO_OW_IOPS") IOPS; cardnode p50 / this: $(ratio "$(field "${CN_LINE[1]:-}" p50_us)" "$FIO_OW_SYNC_P50")"
  [[ -z "$FIO_NOTE" ]] || echo "note: $FIO_NOTE"
  echo
  echo "behind each rate (a write in flight at the deadline counts in the latencies, not the rate):"
  echo
  echo "| writers | program | acked in window | window s | acked after it | last ack after the deadline, s | max latency ms | refused, retried | storage bytes per write |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for w in "${WRITERS[@]}"; do
    cn=${CN_LINE[$w]}
    row_note "$w" cardnode "$cn" "$(awk -v b="${CN_WAL_BYTES[$w]}" -v n="$(field "$cn" ops)" 'BEGIN { if (b ~ /^[0-9]+$/ && n > 0) printf "%.0f", b / n; else printf "-" }')"
  done
  for w in "${WRITERS[@]}"; do row_note "$w" sqlite "${SQ_LINE[$w]}" "-"; done
  echo
  if [[ -n "$CN_RPC_LINE" ]]; then
    rpc_p50=$(field "$CN_RPC_LINE" p50_us)
    sub_p50=$(field "${CN_LINE[1]:-}" p50_us)
    echo "RPC round trip without a write (ListNodes, 1 client): p50 $(fmt_ms "$rpc_p50") ms, p99 $(fmt_ms "$(field "$CN_RPC_LINE" p99_us)") ms; a single submit's p50 less this: $(awk -v s="$sub_p50" -v r="$rpc_p50" 'BEGIN { if (s ~ /^[0-9.]+$/ && r ~ /^[0-9.]+$/) printf "%.3f", (s - r) / 1000; else printf "-" }') ms"
  fi
  echo
  echo "goals:"
  goal_line "1 submitter within 1.5x of fio's fdatasync p50" "$(field "${CN_LINE[1]:-}" p50_us)" "$FIO_SYNC_P50" le 1.5
  for w in "${WRITERS[@]}"; do
    ((w >= 8)) || continue
    goal_line "$w submitters at >= 10x SQLite's commits/s" "$(field "${CN_LINE[$w]}" ops_per_s)" "$(field "${SQ_LINE[$w]}" ops_per_s)" ge 10
  done
  echo
  echo "idle: the last row's server, holding $IDLE_JOBS_HELD queued jobs (VmRSS $IDLE_RSS kB), after it went quiet"
  echo
  echo "| idle window | write_bytes (/proc/PID/io) | cardnode_storage_bytes_written_total |"
  echo "|---|---|---|"
  echo "| $IDLE_SECONDS s | $IDLE_IO | $IDLE_METRIC |"
  [[ -z "$IDLE_NOTE" ]] || echo "note: $IDLE_NOTE"
}

# row_note WRITERS PROGRAM RESULT_LINE BYTES_PER_WRITE: one row of the table behind the rates.
row_note() {
  local r=$3
  echo "| $1 | $2 | $(awk -v a="$(field "$r" ops)" -v t="$(field "$r" tail_ops)" 'BEGIN { print a - t }') | $(field "$r" seconds) | $(field "$r" tail_ops) | $(field "$r" tail_s) | $(fmt_ms "$(field "$r" max_us)") | $(field "$r" refused) | $4 |"
}

# goal_line TEXT A B le|ge LIMIT: "met"/"missed" for A/B against LIMIT.
goal_line() {
  awk -v t="$1" -v a="$2" -v b="$3" -v op="$4" -v lim="$5" 'BEGIN {
    if (a !~ /^[0-9.e+]+$/ || b !~ /^[0-9.e+]+$/ || b + 0 == 0) { printf "  %s: not measured\n", t; exit }
    r = a / b; ok = (op == "le") ? r <= lim : r >= lim
    printf "  %s: %.2fx, %s\n", t, r, ok ? "met" : "missed" }'
}

# ---------------------------------------------------------------------------------------------

LOAD_START=""

sp_main() {
  local args=() w
  while (($#)); do
    case $1 in
      --seconds) SECONDS_PER=$2; shift ;;
      --idle-seconds) IDLE_SECONDS=$2; shift ;;
      --idle-jobs) IDLE_JOBS=$2; shift ;;
      --row-cap) ROW_CAP=$2; shift ;;
      --writers) read -r -a WRITERS <<<"$2"; shift ;;
      --dir) export TMPDIR=$2; shift ;;
      --fio-size) FIO_SIZE=$2; shift ;;
      --submit-bench) SUBMIT_BENCH=$2; shift ;;
      --sqlite-commit) SQLITE_COMMIT=$2; shift ;;
      --no-build) DO_BUILD=0 ;;
      --no-install) DO_INSTALL=0 ;;
      -h|--help) usage; exit 0 ;;
      -*) die "unknown option $1 (see $0 --help)" ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  ((${#args[@]} <= 1)) || die "usage: $0 [options] [CARDNODE_BIN]"
  for v in "$SECONDS_PER" "$IDLE_SECONDS" "$IDLE_JOBS" "$ROW_CAP" "${WRITERS[@]}"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "numbers must be positive integers, got '$v'"
  done
  [[ -d "${TMPDIR:-/tmp}" ]] || die "--dir ${TMPDIR:-}: no such directory"

  ((DO_INSTALL)) && install_deps
  for t in fio jq; do command -v $t >/dev/null || die "$t is not installed (drop --no-install)"; done
  ((DO_BUILD)) && build
  CN_BIN=$(resolve_bin "${args[0]:-$BUILD_DIR/cli/cardnode}")
  SUBMIT_BENCH=${SUBMIT_BENCH:-$BUILD_DIR/bench/submit_bench}
  SQLITE_COMMIT=${SQLITE_COMMIT:-$BUILD_DIR/bench/sqlite_commit}
  [[ -x "$SUBMIT_BENCH" ]] || die "no submit_bench at $SUBMIT_BENCH (build it, or pass --submit-bench)"
  [[ -x "$SQLITE_COMMIT" ]] || die "no sqlite_commit at $SQLITE_COMMIT (needs libsqlite3-dev at configure time; or pass --sqlite-commit)"

  pb_init
  [[ "$(stat -f -c %T "$PB_TMP")" != tmpfs ]] || log "warning: $PB_TMP is on tmpfs: fdatasync does nothing there"
  LOAD_START=$(load_avg)
  log "temp dir $PB_TMP, load average $LOAD_START"
  if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l >= n / 4) }'; then
    log "warning: the machine is busy (load $LOAD_START on $(nproc) CPUs): the figures will be noisy"
  fi

  bench_fio
  for w in "${WRITERS[@]}"; do bench_sqlite "$w"; done
  for w in "${WRITERS[@]}"; do bench_cardnode "$w"; done
  bench_idle
  cardnode_stop
  report
}

sp_main "$@"
