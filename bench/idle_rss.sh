#!/usr/bin/env bash
# idle_rss.sh [CARDNODE_BIN]
#
# Idle memory of a warmed-up cardnode pool — a server (--no-exec) and one agent, the pair
# slurmctld and slurmd are — and (if Slurm is installed) of slurmctld and slurmd on the
# same machine in the same run: VmRSS and RssAnon from /proc/PID/status after one tiny
# job and ~3 s of idleness. Installs nothing. Everything it starts (cardnode server,
# slurmctld, slurmd, and munged if it was not already running) is stopped on exit.
#
# This file is also the helper library of peer_slurm.sh, which sources it (the functions
# below; `main` runs only when the file is executed).
#
# Environment: SLURM_CTLD_PORT (16817), SLURMD_PORT (16818), KEEP_TMP=1 keeps the temp dir,
# SLURM_TUNED_PARAMS (SchedulerParameters of the tuned config, used by peer_slurm.sh).
set -euo pipefail

PB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PB_ROOT=$(dirname "$PB_HERE")
SLURM_CTLD_PORT=${SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
# Without `defer`: with it, every srun waited ~1 s for the next scheduling pass here and the
# array drained no faster (README.md).
SLURM_TUNED_PARAMS=${SLURM_TUNED_PARAMS:-max_rpc_cnt=0,sched_min_interval=0,batch_sched_delay=0,default_queue_depth=1000}

PB_TMP=""             # temp dir holding everything this run creates
PB_CN_PID=""          # cardnode server
PB_CTLD_PID=""        # slurmctld (run with -D, our child)
PB_SLURMD_PID=""      # slurmd (run with -D, our child)
PB_MUNGED_PID=""      # munged, only if we started it

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# pb_install PKG...: apt-get install what is missing (as root or through sudo); an apt-get
# update only when the first try fails. Bounded by timeouts.
pb_install() {
  local missing=() p sudo=""
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to install ${missing[*]}"
    sudo=sudo
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 $sudo apt-get install -y -qq "${missing[@]}" >&2 \
    || { timeout 300 $sudo apt-get update -qq >&2 && timeout 600 $sudo apt-get install -y -qq "${missing[@]}" >&2; } \
    || die "apt-get install ${missing[*]} failed"
}

# stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL. Bounded.
stop_pid() {
  local pid=$1 name=$2 i
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "warning: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

pb_cleanup() {
  local rc=$?
  set +e
  cardnode_stop
  slurm_stop
  if [[ -n "$PB_MUNGED_PID" ]]; then
    stop_pid "$PB_MUNGED_PID" munged
    PB_MUNGED_PID=""
  fi
  if [[ -n "$PB_TMP" && -d "$PB_TMP" ]]; then
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $PB_TMP"; else rm -rf "$PB_TMP"; fi
  fi
  exit "$rc"
}

pb_init() {
  PB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/cardnode-bench.XXXXXX")
  trap pb_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# resolve_bin [PATH]: the cardnode binary to use.
resolve_bin() {
  local b=${1:-$PB_ROOT/build/release/cli/cardnode}
  [[ -x "$b" ]] || die "cardnode binary not found at $b (build it: cmake --build build/release --target cardnode, or pass its path)"
  (cd "$(dirname "$b")" && echo "$(pwd)/$(basename "$b")")
}

# rss_kb PID FIELD: a field of /proc/PID/status in kB (VmRSS, RssAnon).
rss_kb() {
  awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "?" }' "/proc/$1/status"
}

# ---------------------------------------------------------------------------------------------
# cardnode

CN_BIN=""
CN_DIR=""

# cardnode_start [SERVER_ARGS...]: a one-board pool on a fresh data dir under PB_TMP;
# SERVER_ARGS (e.g. --no-exec) go to `cardnode server`.
# shellcheck disable=SC2120  # storage_peers.sh passes them; this file's main does not
cardnode_start() {
  local i
  CN_DIR=$PB_TMP/cardnode-$RANDOM
  mkdir -p "$CN_DIR"
  "$CN_BIN" server --data-dir "$CN_DIR" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "$@" \
    >"$CN_DIR.out" 2>&1 &
  PB_CN_PID=$!
  for ((i = 0; i < 200; i++)); do
    [[ -s "$CN_DIR/addr" ]] && break
    kill -0 "$PB_CN_PID" 2>/dev/null || { cat "$CN_DIR.out" >&2; die "cardnode server exited during startup"; }
    sleep 0.05
  done
  [[ -s "$CN_DIR/addr" ]] || { cat "$CN_DIR.out" >&2; die "cardnode server did not write $CN_DIR/addr within 10 s"; }
}

# agent_start: `cardnode agent` joined to the pool of cardnode_start, its own data dir.
PB_AGENT_PID=""
agent_start() {
  local dir=$PB_TMP/agent-$RANDOM i
  mkdir -p "$dir"
  cp "$CN_DIR/token" "$dir/token"
  "$CN_BIN" agent --data-dir "$dir" --join "$(cat "$CN_DIR/addr")" --name bench-agent \
    >"$dir.out" 2>&1 &
  PB_AGENT_PID=$!
  for ((i = 0; i < 200; i++)); do
    cn nodes 2>/dev/null | grep -q "^bench-agent .*ready" && return 0
    kill -0 "$PB_AGENT_PID" 2>/dev/null || { cat "$dir.out" >&2; die "cardnode agent exited during startup"; }
    sleep 0.05
  done
  cat "$dir.out" >&2
  die "cardnode agent did not join within 10 s"
}

cardnode_stop() {
  if [[ -n "$PB_AGENT_PID" ]]; then
    stop_pid "$PB_AGENT_PID" "cardnode agent"
    PB_AGENT_PID=""
  fi
  if [[ -n "$PB_CN_PID" ]]; then
    stop_pid "$PB_CN_PID" "cardnode server"
    PB_CN_PID=""
  fi
}

# cn ARGS...: the client against the current pool, bounded by a timeout.
cn() { timeout "${CN_TIMEOUT:-120}" "$CN_BIN" --data-dir "$CN_DIR" "$@"; }

# ---------------------------------------------------------------------------------------------
# Slurm (one node on loopback, everything under a temp dir; see /work/shared/peers/slurm.md)

SLURM_DIR=""

have_slurm() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; }

port_busy() {
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# munge_ensure: use a running munged, else start one as the munge user (and stop it at exit).
munge_ensure() {
  local i
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if pgrep -x munged >/dev/null; then die "munged is running but munge -n | unmunge fails"; fi
  [[ $EUID -eq 0 ]] || die "munged is not running and starting it needs root"
  mkdir -p /run/munge
  chown munge:munge /run/munge
  chown -R munge:munge /var/log/munge /var/lib/munge /etc/munge
  rm -f /run/munge/munged.pid
  su -s /bin/sh munge -c munged || die "munged failed to start (see /var/log/munge/munged.log)"
  for ((i = 0; i < 100; i++)); do
    [[ -s /run/munge/munged.pid ]] && break
    sleep 0.05
  done
  [[ -s /run/munge/munged.pid ]] || die "munged wrote no pid file within 5 s"
  PB_MUNGED_PID=$(cat /run/munge/munged.pid)
  for ((i = 0; i < 100; i++)); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  die "munge -n | unmunge still fails 5 s after starting munged"
}

# slurm_write_conf DIR MODE [MAX_ARRAY]: MODE is default (the recipe) or tuned (the
# recipe plus the high-throughput settings valid in Slurm 22.05).
slurm_write_conf() {
  local dir=$1 mode=$2 max_array=${3:-1001} h
  h=$(hostname -s)
  mkdir -p "$dir/state" "$dir/spool"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=peer
SlurmctldHost=$h(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$SLURM_CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/ctld.pid
SlurmdPidFile=$dir/d.pid
SlurmctldLogFile=$dir/ctld.log
SlurmdLogFile=$dir/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MaxJobCount=100000
MaxArraySize=$(( max_array > 1001 ? max_array : 1001 ))
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
EOF
  if [[ "$mode" == tuned ]]; then
    # Slurm's high-throughput guide, restricted to keys slurm.conf(5) of 22.05 documents.
    cat >>"$dir/slurm.conf" <<EOF
SchedulerParameters=$SLURM_TUNED_PARAMS
MinJobAge=1
SlurmctldDebug=error
SlurmdDebug=error
EOF
  else
    echo "MinJobAge=2" >>"$dir/slurm.conf"
  fi
  cat >>"$dir/slurm.conf" <<EOF
NodeName=$h NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 State=UNKNOWN
PartitionName=main Nodes=$h Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

# slurm_start MODE [MAX_ARRAY]: slurmctld + slurmd in a fresh dir; returns once sinfo says idle.
slurm_start() {
  local mode=$1 max_array=${2:-1001} i st p
  for p in "$SLURM_CTLD_PORT" "$SLURMD_PORT"; do
    port_busy "$p" && die "port $p is in use (another Slurm?); set SLURM_CTLD_PORT/SLURMD_PORT"
  done
  munge_ensure
  SLURM_DIR=$PB_TMP/slurm-$mode-$RANDOM
  slurm_write_conf "$SLURM_DIR" "$mode" "$max_array"
  export SLURM_CONF=$SLURM_DIR/slurm.conf
  slurmctld -D -i -f "$SLURM_CONF" >"$SLURM_DIR/ctld.out" 2>&1 &
  PB_CTLD_PID=$!
  # slurmd registers with slurmctld; give slurmctld a moment to listen first.
  for ((i = 0; i < 100; i++)); do
    port_busy "$SLURM_CTLD_PORT" && break
    kill -0 "$PB_CTLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$PB_CTLD_PID" 2>/dev/null || { tail -20 "$SLURM_DIR/ctld.log" "$SLURM_DIR/ctld.out" >&2 || true; die "slurmctld exited at startup"; }
  slurmd -D -f "$SLURM_CONF" >"$SLURM_DIR/d.out" 2>&1 &
  PB_SLURMD_PID=$!
  st=""
  for ((i = 0; i < 300; i++)); do
    kill -0 "$PB_SLURMD_PID" 2>/dev/null || { tail -20 "$SLURM_DIR/d.log" "$SLURM_DIR/d.out" >&2 || true; die "slurmd exited at startup"; }
    st=$(timeout 5 sinfo -h -N -o %t 2>/dev/null | head -1) || st=""
    [[ "$st" == idle ]] && return 0
    sleep 0.1
  done
  tail -20 "$SLURM_DIR/ctld.log" "$SLURM_DIR/d.log" >&2 || true
  die "Slurm node not idle within 30 s (sinfo says '${st:-nothing}')"
}

slurm_stop() {
  if [[ -n "$PB_SLURMD_PID" ]]; then
    stop_pid "$PB_SLURMD_PID" slurmd
    PB_SLURMD_PID=""
  fi
  if [[ -n "$PB_CTLD_PID" ]]; then
    stop_pid "$PB_CTLD_PID" slurmctld
    PB_CTLD_PID=""
  fi
}

# ---------------------------------------------------------------------------------------------

rss_row() { printf '%-18s %12s %12s %12s\n' "$@"; }
# pss_kb PID: proportional set size (shared pages divided among their users), kB.
pss_kb() { awk '$1 == "Pss:" { print $2; found = 1 } END { if (!found) print "?" }' "/proc/$1/smaps_rollup"; }

main() {
  [[ $# -le 1 ]] || die "usage: $0 [CARDNODE_BIN]"
  CN_BIN=$(resolve_bin "${1:-}")
  pb_init

  # A pool of two processes, as on two boards: the server coordinates only, the agent
  # runs the warm-up job (and keeps heartbeating while idle).
  cardnode_start --no-exec
  agent_start
  cn run --wait -- true >/dev/null 2>&1 || die "cardnode warm-up job failed"

  local slurm=0
  if have_slurm; then
    slurm=1
    slurm_start default
    timeout 60 srun --quiet true || die "srun true failed"
  else
    log "Slurm not installed (slurmctld/slurmd/munged not in PATH): cardnode only"
  fi

  sleep 3

  local cn_rss cn_anon cn_pss ag_rss ag_anon ag_pss
  cn_rss=$(rss_kb "$PB_CN_PID" VmRSS)
  cn_anon=$(rss_kb "$PB_CN_PID" RssAnon)
  cn_pss=$(pss_kb "$PB_CN_PID")
  ag_rss=$(rss_kb "$PB_AGENT_PID" VmRSS)
  ag_anon=$(rss_kb "$PB_AGENT_PID" RssAnon)
  ag_pss=$(pss_kb "$PB_AGENT_PID")
  echo "idle memory after one tiny job + 3 s idle (kB; VmRSS, RssAnon from /proc/PID/status,"
  echo "Pss from /proc/PID/smaps_rollup), same run"
  echo "cardnode: $CN_BIN"
  if [[ $slurm == 1 ]]; then echo "slurm: $(slurmctld -V)  (recipe config, $SLURM_DIR)"; fi
  echo
  rss_row process VmRSS RssAnon Pss
  rss_row "cardnode server" "$cn_rss" "$cn_anon" "$cn_pss"
  rss_row "cardnode agent" "$ag_rss" "$ag_anon" "$ag_pss"
  if [[ $slurm == 1 ]]; then
    local c_rss c_anon c_pss d_rss d_anon d_pss
    c_rss=$(rss_kb "$PB_CTLD_PID" VmRSS); c_anon=$(rss_kb "$PB_CTLD_PID" RssAnon); c_pss=$(pss_kb "$PB_CTLD_PID")
    d_rss=$(rss_kb "$PB_SLURMD_PID" VmRSS); d_anon=$(rss_kb "$PB_SLURMD_PID" RssAnon); d_pss=$(pss_kb "$PB_SLURMD_PID")
    rss_row slurmctld "$c_rss" "$c_anon" "$c_pss"
    rss_row slurmd "$d_rss" "$d_anon" "$d_pss"
    rss_row "slurmctld+slurmd" $((c_rss + d_rss)) $((c_anon + d_anon)) $((c_pss + d_pss))
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
