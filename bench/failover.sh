#!/usr/bin/env bash
# failover.sh [CARDNODE_BIN] [TRIALS=20] [-- SERVER_ARGS...]
#
# Time from an agent's death to its task running elsewhere, over TRIALS trials, in one
# run: a server (--no-exec, plus SERVER_ARGS, e.g. --heartbeat 200ms --grace 2s) and two
# agents, "victim" and "survivor", on loopback. Each trial:
#   1. drains the survivor, runs a one-task job (sleep), waits until it runs on the victim,
#      undrains the survivor;
#   2. kill -9 of the victim (t0), then `ps JOB --json` every 20 ms until the task runs on
#      the survivor (t1); failover = t1 - t0;
#   3. cancels the job and restarts the victim (which kills its leftover and reports it).
# Prints every trial and min / median / p90 / max. The failover is the grace (silence
# before a node is down) plus detection granularity (the server's 1 s tick) plus a
# placement and a spawn; it is dominated by --grace by design.
#
# Reuses idle_rss.sh's helpers; installs nothing; stops everything it started on exit.
set -euo pipefail

# shellcheck source=idle_rss.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle_rss.sh"

VICTIM_PID=""
SURVIVOR_PID=""
VICTIM_DIR=""

# The agents first, then idle_rss.sh's pb_cleanup (the server, the temp dir), keeping the
# exit status.
fo_cleanup() {
  local rc=$?
  set +e
  [[ -n "$VICTIM_PID" ]] && stop_pid "$VICTIM_PID" victim
  [[ -n "$SURVIVOR_PID" ]] && stop_pid "$SURVIVOR_PID" survivor
  return "$rc"
}

# start_agent NAME DIR: echoes the pid.
start_agent() {
  local name=$1 dir=$2
  mkdir -p "$dir"
  cp "$CN_DIR/token" "$dir/token"
  "$CN_BIN" agent --data-dir "$dir" --join "$(cat "$CN_DIR/addr")" --name "$name" \
    >>"$dir.out" 2>&1 &
  echo $!
}

# node_state NAME: its state in `nodes --json`, or nothing.
node_state() {
  cn nodes --json | python3 -c 'import json,sys
for n in json.load(sys.stdin)["nodes"]:
    if n["name"] == sys.argv[1]: print(n["state"])' "$1"
}

wait_state() {  # NAME STATE: bounded 30 s
  local i
  for ((i = 0; i < 600; i++)); do
    [[ "$(node_state "$1")" == "$2" ]] && return 0
    sleep 0.05
  done
  die "node $1 not $2 within 30 s"
}

# task_on JOB: "STATE NODE" of task 0.
task_on() {
  cn ps "$1" --json | python3 -c 'import json,sys
t = json.load(sys.stdin)["tasks"][0]; print(t["state"], t.get("node", ""))'
}

main() {
  local bin="" trials=20
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    if [[ "$1" =~ ^[0-9]+$ ]]; then trials=$1; else bin=$1; fi
    shift
  done
  [[ "${1:-}" == "--" ]] && shift
  CN_BIN=$(resolve_bin "$bin")
  pb_init
  trap 'fo_cleanup; pb_cleanup' EXIT
  cardnode_start --no-exec "$@"
  VICTIM_DIR=$PB_TMP/victim
  VICTIM_PID=$(start_agent victim "$VICTIM_DIR")
  SURVIVOR_PID=$(start_agent survivor "$PB_TMP/survivor")
  wait_state victim ready
  wait_state survivor ready

  local results=() i job t0 t1 now
  for ((i = 1; i <= trials; i++)); do
    cn drain survivor >/dev/null
    job=$(cn run --cpu 0.1 --mem 16M -- sleep 600)
    for ((n = 0; n < 600; n++)); do
      [[ "$(task_on "$job")" == "running victim" ]] && break
      sleep 0.05
    done
    [[ "$(task_on "$job")" == "running victim" ]] || die "trial $i: job $job did not start on the victim"
    cn drain survivor --undrain >/dev/null
    t0=$(now_ms)
    kill -KILL "$VICTIM_PID"
    wait "$VICTIM_PID" 2>/dev/null || true
    VICTIM_PID=""
    t1=""
    for ((n = 0; n < 3000; n++)); do  # 60 s at most
      if [[ "$(task_on "$job")" == "running survivor" ]]; then t1=$(now_ms); break; fi
      sleep 0.02
    done
    [[ -n "$t1" ]] || die "trial $i: the task did not move within 60 s"
    results+=($((t1 - t0)))
    log "trial $i: $((t1 - t0)) ms"
    cn cancel "$job" >/dev/null
    VICTIM_PID=$(start_agent victim "$VICTIM_DIR")
    wait_state victim ready
  done

  echo "failover: agent kill -9 -> its task running on another agent, $trials trials"
  echo "server: --no-exec $*"
  printf '%s\n' "${results[@]}" | sort -n | awk '{ a[NR] = $1; s += $1 } END {
    p90 = a[int(NR * 0.9 + 0.999)]; if (p90 == "") p90 = a[NR]
    med = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "ms: min %d  median %d  p90 %d  max %d  mean %.0f\n", a[1], med, p90, a[NR], s / NR
    printf "all:"; for (i = 1; i <= NR; i++) printf " %d", a[i]; printf "\n" }'
}

main "$@"
