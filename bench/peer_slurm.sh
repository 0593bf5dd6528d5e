#!/usr/bin/env bash
# peer_slurm.sh [--install] [CARDNODE_BIN] [N=200]
#
# Throughput and latency of cardnode against Slurm on this one machine, same run:
#   - drain an N-task array of `true`:
#       cardnode  run --count N --cpu 0.1 --mem 16M --wait -- true   (returns when all are final)
#       Slurm     sbatch --array=1-N --wrap true, then poll squeue until empty
#     with Slurm in the recipe's default config and in a tuned (high-throughput) config;
#   - one-task latency: median of LAT_RUNS (20) x `cardnode run --wait -- true` vs `srun true`.
# Runs one after another (never both at once), each on a fresh temp data dir / state dir.
# Installs nothing unless given --install (then: apt-get install -y slurm-wlm munge).
#
# Environment: LAT_RUNS (20), DRAIN_LIMIT seconds (300), SLURM_CTLD_PORT, SLURMD_PORT,
# SLURM_TUNED_PARAMS (the tuned config's SchedulerParameters; see idle_rss.sh),
# KEEP_TMP=1 keeps the temp dir (logs, slurm.conf, jobcomp.txt).
set -euo pipefail

# shellcheck source=idle_rss.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle_rss.sh"

LAT_RUNS=${LAT_RUNS:-20}
DRAIN_LIMIT=${DRAIN_LIMIT:-300}

# median: of the numbers on stdin, one a line.
median() {
  sort -n | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "?"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# ratio A B: A/B to one decimal, or "-" if either is not a number.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) { print "-"; exit }
    printf "%.1fx\n", a / b }'
}
secs() { awk -v ms="$1" 'BEGIN { if (ms ~ /^[0-9.]+$/) printf "%.2f\n", ms / 1000; else print ms }'; }
per_s() { awk -v n="$1" -v ms="$2" 'BEGIN { if (ms ~ /^[0-9.]+$/ && ms > 0) printf "%.1f\n", n * 1000 / ms; else print "-" }'; }

# ---------------------------------------------------------------------------------------------

CN_DRAIN_MS="-"
CN_DRAIN8_MS="-"
CN_LAT_MS="-"

# cn_drain N CPU: runs an N-task array of `true` with --cpu CPU, checks every task
# succeeded, and leaves the wall time in DRAIN_MS.
cn_drain() {
  local n=$1 cpu=$2 t0 t1 out id json
  log "cardnode: draining $n tasks at --cpu $cpu"
  t0=$(now_ms)
  if ! out=$(CN_TIMEOUT=$DRAIN_LIMIT cn run --count "$n" --cpu "$cpu" --mem 16M --wait -- true 2>&1); then
    log "$out"
    die "cardnode run --count $n --wait failed or took over ${DRAIN_LIMIT} s"
  fi
  t1=$(now_ms)
  DRAIN_MS=$((t1 - t0))
  # With --wait the id is only in the stderr line "cardnode: job ID submitted, waiting".
  id=$(sed -n 's/^cardnode: job \([0-9]*\) submitted.*/\1/p' <<<"$out" | head -1)
  [[ -n "$id" ]] || die "no job id in: $out"
  json=$(cn ps "$id" --json)
  grep -q '"state":"succeeded"' <<<"$json" && grep -q "\"states\":{\"succeeded\":$n}" <<<"$json" \
    || die "job $id not all succeeded: $(head -c 300 <<<"$json")"
}

bench_cardnode() {
  local n=$1 t0 t1 i
  log "cardnode: starting server"
  cardnode_start
  cn run --wait -- true >/dev/null 2>&1 || die "cardnode warm-up job failed"

  cn_drain "$n" 0.1
  CN_DRAIN_MS=$DRAIN_MS
  # The same concurrency as Slurm here (8 at once: 2 CPUs, FORCE:4): a like-for-like row.
  cn_drain "$n" 0.25
  CN_DRAIN8_MS=$DRAIN_MS

  log "cardnode: latency, $LAT_RUNS x run --wait -- true"
  for ((i = 0; i < LAT_RUNS; i++)); do
    t0=$(now_ms)
    CN_TIMEOUT=60 cn run --wait -- true >/dev/null 2>&1 || die "cardnode run --wait -- true failed"
    t1=$(now_ms)
    echo $((t1 - t0))
  done >"$PB_TMP/cn_lat.txt"
  CN_LAT_MS=$(median <"$PB_TMP/cn_lat.txt")
  cardnode_stop
}

declare -A S_DRAIN_MS=([default]="-" [tuned]="-")
declare -A S_LAT_MS=([default]="-" [tuned]="-")
declare -A S_MAXRUN=([default]="-" [tuned]="-")
declare -A S_NOTE=([default]="" [tuned]="")

bench_slurm() {
  local mode=$1 n=$2 t0 t1 deadline id out total running maxrun=0 done0 done1 i
  log "slurm ($mode): starting slurmctld + slurmd"
  slurm_start "$mode" $((n + 1))
  timeout 60 srun --quiet true || die "slurm ($mode): warm-up srun true failed"
  done0=$(grep -c 'JobState=COMPLETED' "$SLURM_DIR/jobcomp.txt" 2>/dev/null) || done0=0

  log "slurm ($mode): draining $n array tasks"
  t0=$(now_ms)
  deadline=$((t0 + DRAIN_LIMIT * 1000))
  id=$(timeout 60 sbatch --parsable --array=1-"$n" --output=/dev/null --wrap true) \
    || die "slurm ($mode): sbatch failed"
  id=${id%%;*}
  while :; do
    # One squeue call per poll: total lines (pending+running+completing) and how many run.
    if out=$(timeout 10 squeue -h -o %t 2>/dev/null); then
      total=$(grep -c . <<<"$out") || total=0
      running=$(grep -cx R <<<"$out") || running=0
      ((running > maxrun)) && maxrun=$running
      ((total == 0)) && break
    fi
    if (($(now_ms) > deadline)); then
      S_NOTE[$mode]="not drained within ${DRAIN_LIMIT} s (${total:-?} left)"
      timeout 30 scancel "$id" || true
      break
    fi
    sleep 0.1
  done
  t1=$(now_ms)
  S_MAXRUN[$mode]=$maxrun
  if [[ -z "${S_NOTE[$mode]}" ]]; then
    S_DRAIN_MS[$mode]=$((t1 - t0))
    # jobcomp records land when a job completes; allow a moment for the last ones.
    for ((i = 0; i < 50; i++)); do
      done1=$(grep -c 'JobState=COMPLETED' "$SLURM_DIR/jobcomp.txt" 2>/dev/null) || done1=0
      ((done1 - done0 >= n)) && break
      sleep 0.1
    done
    ((done1 - done0 == n)) || S_NOTE[$mode]="jobcomp shows $((done1 - done0)) of $n COMPLETED"
  fi

  log "slurm ($mode): latency, $LAT_RUNS x srun true"
  for ((i = 0; i < LAT_RUNS; i++)); do
    t0=$(now_ms)
    timeout 60 srun --quiet true || die "slurm ($mode): srun true failed"
    t1=$(now_ms)
    echo $((t1 - t0))
  done >"$PB_TMP/slurm_${mode}_lat.txt"
  S_LAT_MS[$mode]=$(median <"$PB_TMP/slurm_${mode}_lat.txt")
  slurm_stop
}

# ---------------------------------------------------------------------------------------------

peer_row() { printf '%-40s %10s %13s %13s %12s %12s\n' "$@"; }

peer_main() {
  local install=0 args=() n bin
  for a in "$@"; do
    case $a in
      --install) install=1 ;;
      -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
      -*) die "unknown option $a (usage: $0 [--install] [CARDNODE_BIN] [N=200])" ;;
      *) args+=("$a") ;;
    esac
  done
  ((${#args[@]} <= 2)) || die "usage: $0 [--install] [CARDNODE_BIN] [N=200]"
  bin=${args[0]:-}
  n=${args[1]:-200}
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
  CN_BIN=$(resolve_bin "$bin")

  if ! have_slurm && ((install)); then
    [[ $EUID -eq 0 ]] || die "--install needs root"
    log "installing slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y slurm-wlm munge >&2 \
      || { timeout 300 apt-get update >&2 && timeout 600 apt-get install -y slurm-wlm munge >&2; } \
      || die "apt-get install slurm-wlm munge failed"
  fi
  local slurm=0
  have_slurm && slurm=1
  ((slurm)) || log "Slurm not installed (pass --install): cardnode figures only"

  pb_init
  bench_cardnode "$n"
  if ((slurm)); then
    bench_slurm default "$n"
    bench_slurm tuned "$n"
  fi

  echo "peer_slurm: $n-task array of \`true\` and one-task latency, one machine ($(nproc) CPUs), same run"
  echo "cardnode: $CN_BIN"
  echo "  tasks ask --cpu 0.1 --mem 16M, so up to 20 run at once on 2 cores; the '8 at once' row asks"
  echo "  --cpu 0.25, Slurm's concurrency here (latency runs use the defaults)"
  if ((slurm)); then
    echo "slurm:    $(slurmctld -V); node CPUs=2, OverSubscribe=FORCE:4, 1 CPU per task: up to 8 at once"
    echo "  default: the recipe (MinJobAge=2, SchedulerParameters unset)"
    echo "  tuned:   SchedulerParameters=$SLURM_TUNED_PARAMS"
    echo "           MinJobAge=1 SlurmctldDebug=error SlurmdDebug=error"
    echo "  drain = sbatch until squeue -h is empty (polled every 0.1 s); completion checked in jobcomp/filetxt"
  fi
  echo
  peer_row metric cardnode slurm-default slurm-tuned default/cn tuned/cn
  peer_row "drain $n tasks (s)" "$(secs "$CN_DRAIN_MS")" "$(secs "${S_DRAIN_MS[default]}")" \
    "$(secs "${S_DRAIN_MS[tuned]}")" "$(ratio "${S_DRAIN_MS[default]}" "$CN_DRAIN_MS")" \
    "$(ratio "${S_DRAIN_MS[tuned]}" "$CN_DRAIN_MS")"
  peer_row "drain $n tasks, 8 at once (s)" "$(secs "$CN_DRAIN8_MS")" "$(secs "${S_DRAIN_MS[default]}")" \
    "$(secs "${S_DRAIN_MS[tuned]}")" "$(ratio "${S_DRAIN_MS[default]}" "$CN_DRAIN8_MS")" \
    "$(ratio "${S_DRAIN_MS[tuned]}" "$CN_DRAIN8_MS")"
  peer_row "throughput (tasks/s)" "$(per_s "$n" "$CN_DRAIN_MS")" "$(per_s "$n" "${S_DRAIN_MS[default]}")" \
    "$(per_s "$n" "${S_DRAIN_MS[tuned]}")" "" ""
  peer_row "max running at once (squeue samples)" "-" "${S_MAXRUN[default]}" "${S_MAXRUN[tuned]}" "" ""
  peer_row "one task, median of $LAT_RUNS (ms)" "$CN_LAT_MS" "${S_LAT_MS[default]}" "${S_LAT_MS[tuned]}" \
    "$(ratio "${S_LAT_MS[default]}" "$CN_LAT_MS")" "$(ratio "${S_LAT_MS[tuned]}" "$CN_LAT_MS")"
  echo "  (one task: cardnode \`run --wait -- true\` vs \`srun true\`, wall time of the client command)"
  local m
  for m in default tuned; do
    [[ -z "${S_NOTE[$m]}" ]] || echo "note: slurm-$m: ${S_NOTE[$m]}"
  done
}

peer_main "$@"
