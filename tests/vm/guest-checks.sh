#!/bin/sh
# guest-checks.sh — runs as root inside the arm64 VM (run-in-vm.sh's oneshot unit), against
# the cardnode package installed the way a Pi owner would: dpkg -i, then systemd.
#
# Prints one line per check, "PASS name" or "FAIL name: why", then
# "=== summary: P passed, F failed" and the cross-built unit tests' results. vm-test.sh fails
# on any FAIL, a missing summary, or a failed unit test. Every wait polls for the state it
# checks; its bound (seconds, generous: the guest is an emulated CPU) only ends a hang.
set -u
P=/opt/payload
D=/var/lib/cardnode
A2=/var/lib/cardnode-agent2
pass=0
fail=0
t0=$(date +%s)
ok() { echo "PASS $1 (+$(($(date +%s) - t0)) s)"; pass=$((pass + 1)); }
bad() { echo "FAIL $1 (+$(($(date +%s) - t0)) s): $2"; fail=$((fail + 1)); }
check() { # check NAME CMD...: PASS when CMD succeeds
  name=$1; shift
  if "$@" >/tmp/check.out 2>&1; then ok "$name"; else bad "$name" "$(tail -c 300 /tmp/check.out | tr '\n' ' ')"; fi
}
wait_for() { # wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds
  limit=$(($1 * 5)); shift; n=0
  until "$@" >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -ge "$limit" ] && return 1; sleep 0.2
  done
}
# Every client call is bounded: a hung one fails its check instead of the whole run.
cn() { timeout 120 cardnode --data-dir "$D" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# submit ARGS... -- CMD: submits a job, prints its id; with --wait, returns once it has ended.
# (run prints the id on stdout; with --wait it says "cardnode: job N submitted" on stderr.)
submit() { cn run "$@" 2>&1 | sed -n -E 's/^([0-9]+)$/\1/p; s/^cardnode: job ([0-9]+) submitted.*/\1/p' | head -n1; }
task_state() { cn ps "$1" --json | json "d['tasks'][0]['state']"; }
job_state() { cn ps "$1" --json | json "d['state']"; }
job_done() { s=$(job_state "$1"); [ "$s" != queued ] && [ "$s" != running ]; }
# (Checks that need cn run as functions: `sh -c` would not see it.)
in_units_subtree() { cn logs "$1.0" | head -n1 | grep -q '^/system.slice/cardnode-server.service/'; }
two_boards_ready() { [ "$(cn nodes --json | json "sum(n['state'] == 'ready' for n in d['nodes'])")" = 2 ]; }
server_answers() { systemctl is-active --quiet cardnode-server && cn nodes; }
# The server's /metrics and status page (its --metrics-listen default, 0.0.0.0:9742).
metrics_say_it() {
  curl -sf http://127.0.0.1:9742/metrics |
    grep -E '^cardnode_build_info\{' | grep 'io_backend="io_uring"' | grep -q 'isolation="cgroup-v2"'
}
status_page_lists() { curl -sf http://127.0.0.1:9742/ | grep -q "$1"; }
denied() { [ "$(task_state "$1")" = failed ] && cn logs "$1.0" --stderr | grep -q 'Permission denied'; }
# systemd SIGKILLs what a stopped unit leaves in its cgroup, and says so in the journal:
# none of that may be needed (cardnode stops its own tasks, KillMode=mixed).
stopped_its_own() { ! journalctl -b -q -u "$1" | grep -q 'Killing process'; }
main_pid() { systemctl show -p MainPID --value "$1"; }
task_procs() { pgrep -u cardnode-task | wc -l; }

echo "=== CNVM begin $(uname -r) $(uname -m); systemd $(systemctl --version | head -n1 | cut -d' ' -f2)"
echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
mkdir -p /opt/tmp && export TMPDIR=/opt/tmp

# --- install: the server unit starts, the state dir is private, tasks get their own user.
deb=$(ls $P/deb/cardnode_*_arm64.deb | grep -v upgrade | head -n1)
check install dpkg -i "$deb"
check server-unit-active wait_for 120 systemctl is-active --quiet cardnode-server
check server-answers wait_for 120 cn nodes
check state-dir-0700 test "$(stat -c %a $D)" = 700
check token-made test -s $D/token
check task-user-exists id cardnode-task
nodes=$(cn nodes --json)
echo "nodes: $nodes"
check io-uring-backend test "$(echo "$nodes" | json "d['nodes'][0]['io_backend']")" = io_uring
check cgroup-v2-driver test "$(echo "$nodes" | json "d['nodes'][0]['isolation']")" = cgroup-v2
check cgroup-v2-enforces test "$(echo "$nodes" | json "','.join(sorted(d['nodes'][0]['enforced']))")" = cpu,memory,pids

# --- who tasks run as, what they can read, where their cgroups are and what they hold.
j=$(submit --wait -- id -u)
check task-runs-as-cardnode-task test "$(cn logs "$j.0")" = "$(id -u cardnode-task)"
j=$(submit --wait -- cat $D/token)
check task-cannot-read-the-token denied "$j"
j=$(submit --cpu 0.5 --mem 64M --wait -- sh -c 'g=$(sed -n "s/^0:://p" /proc/self/cgroup); echo $g;
  cat /sys/fs/cgroup$g/memory.max /sys/fs/cgroup$g/cpu.max /sys/fs/cgroup$g/pids.max')
echo "a task's cgroup and limits: $(cn logs "$j.0" | tr '\n' ' ')"
check task-cgroup-in-the-units-subtree in_units_subtree "$j"
check task-cgroup-limits test "$(cn logs "$j.0" | tail -n3 | tr '\n' ' ')" = "67108864 50000 100000 4096 "
check server-in-its-own-leaf grep -qx '0::/system.slice/cardnode-server.service/supervisor' /proc/"$(main_pid cardnode-server)"/cgroup

# --- limits enforced: memory (OOM), cpu. (pids: the cross-built executor test below runs a
# fork bomb against a real cgroup v2 pids limit.)
j=$(submit --mem 64M --wait -- python3 -c 'x = bytearray(300 * 2**20)')
check oom-task-ends-oom_killed test "$(task_state "$j")" = oom_killed
j=$(submit --cpu 0.5 --timeout 6s --wait -- sh -c 'while :; do :; done')
cpu=$(cn ps "$j" --json | json "d['tasks'][0]['cpu_user_seconds'] + d['tasks'][0]['cpu_system_seconds']")
echo "a busy loop with --cpu 0.5 for 6 s used $cpu s of CPU"
# The cap is what is checked: unlimited, the loop would use ~6 s. (The floor only shows it
# ran: an emulated vCPU on a busy host may get less than half a core of the host.)
check cpu-limit-holds-half-a-core python3 -c "import sys; sys.exit(0 if 0.3 <= $cpu <= 3.9 else 1)"

# --- a second board: the agent unit, its own data dir, joined to the server.
# A Pi owner sets /etc/default/cardnode-agent and enables the unit; this board already runs
# the server, so a drop-in gives the agent a data dir of its own (the unit's is the server's).
cat > /etc/default/cardnode-agent <<CONF
CARDNODE_JOIN=127.0.0.1:7420
CARDNODE_AGENT_OPTS="--name vm-agent2 --token-file $D/token --metrics-listen 127.0.0.1:9743"
CONF
mkdir -p /etc/systemd/system/cardnode-agent.service.d
cat > /etc/systemd/system/cardnode-agent.service.d/second-agent.conf <<'UNIT'
[Service]
StateDirectory=cardnode-agent2
ExecStart=
ExecStart=/usr/bin/cardnode agent --join ${CARDNODE_JOIN} --data-dir /var/lib/cardnode-agent2 $CARDNODE_AGENT_OPTS
UNIT
systemctl daemon-reload
check agent-enable systemctl enable --now cardnode-agent
check agent-unit-active wait_for 120 systemctl is-active --quiet cardnode-agent
check two-boards-ready wait_for 120 two_boards_ready
check metrics-say-io_uring-and-cgroup-v2 metrics_say_it
check status-page-lists-both-boards status_page_lists vm-agent2
j=$(submit --spread --count 2 --cpu 0.1 --mem 16M --wait -- hostname)
check spread-runs-on-both-boards test "$(cn ps "$j" --json | json "len(set(t['node'] for t in d['tasks']))")" = 2

# --- systemctl stop leaves no task process, on the agent and on the server.
submit --spread --count 4 --cpu 0.1 --mem 16M -- sleep 1000 >/dev/null
check sleeps-running wait_for 120 sh -c '[ "$(pgrep -c -f "^sleep 1000")" = 4 ]'
check agent-stop systemctl stop cardnode-agent
# (The server requeues the agent's tasks once it sees the board gone, so the count of
# sleeps is no measure here: no process may be left in the agent unit's cgroup.)
check agent-stop-leaves-no-process sh -c "! grep -qs cardnode-agent.service /proc/[0-9]*/cgroup"
check agent-stopped-its-own-tasks stopped_its_own cardnode-agent.service
check server-stop systemctl stop cardnode-server
check stop-leaves-no-task-process sh -c '[ "$(pgrep -c -f "^sleep 1000")" = 0 ] && [ "$(pgrep -c -u cardnode-task)" = 0 ]'
check server-stopped-its-own-tasks stopped_its_own cardnode-server.service

# --- kill -9 of the server loses no acknowledged job.
check server-start systemctl start cardnode-server
check server-answers-again wait_for 120 cn nodes
: > /opt/acked
( i=0; while [ $i -lt 20 ]; do id=$(cn run --cpu 0.1 --mem 16M -- true 2>/dev/null) && echo "$id" >> /opt/acked; i=$((i + 1)); done ) &
submitter=$!
wait_for 120 sh -c '[ "$(wc -l < /opt/acked)" -ge 5 ]'
old=$(main_pid cardnode-server)
kill -9 "$old"
check server-restarted-by-systemd wait_for 120 sh -c "p=\$(systemctl show -p MainPID --value cardnode-server); [ \"\$p\" != 0 ] && [ \"\$p\" != $old ]"
wait "$submitter"
check server-answers-after-kill wait_for 120 cn nodes
acked=$(wc -l < /opt/acked)
missing=0
for id in $(cat /opt/acked); do
  wait_for 300 job_done "$id" || true
  [ "$(job_state "$id")" = succeeded ] || { missing=$((missing + 1)); echo "job $id: $(job_state "$id" 2>&1)"; }
done
echo "kill -9: $acked acknowledged jobs, $missing not succeeded"
check kill9-loses-no-acknowledged-job test "$missing" = 0 -a "$acked" -ge 5

# --- upgrade keeps the WAL, snapshots and token; the service comes back.
tok=$(sha256sum $D/token)
jobs_before=$(cn ps --json | json "len(d['jobs'])")
check upgrade dpkg -i $P/deb/upgrade/cardnode_*_arm64.deb
check server-active-after-upgrade wait_for 120 server_answers
check upgrade-keeps-token test "$(sha256sum $D/token)" = "$tok"
check upgrade-keeps-jobs test "$(cn ps --json | json "len(d['jobs'])")" = "$jobs_before"

# --- purge.
check purge dpkg -P cardnode
check purge-stops-everything sh -c '! pgrep -x cardnode && [ "$(pgrep -c -u cardnode-task)" = 0 ]'
check purge-removes-state test ! -e $D

echo "=== summary: $pass passed, $fail failed"
sync   # the report so far survives a guest that hangs below

# --- the cross-built unit tests that need a real kernel: cgroup v2 and io_uring.
# Their build directory's absolute path is baked in (as it is in every test binary:
# paths under it): link it back to the payload's copy.
bp=$(cat $P/build-path)
mkdir -p "$(dirname "$bp")" && ln -sfn $P/build "$bp"
for t in runtime/isolation_test runtime/executor_test storage/io_engine_test storage/wal_test; do
  [ -x "$bp/$t" ] || { echo "UNIT $t: MISSING"; continue; }
  out=$(cd /opt/tmp && LD_LIBRARY_PATH=$P/lib timeout 300 "$bp/$t" 2>&1)
  rc=$?
  echo "$out" | grep -E '^\[  FAILED  \]' | head -n 20
  echo "UNIT $t: rc=$rc (+$(($(date +%s) - t0)) s) $(echo "$out" | grep -E '^\[==========\] .* ran' | tail -n1) $(echo "$out" | grep -E '^\[  (PASSED|SKIPPED)  \]' | tr '\n' ' ')"
  sync
done
echo "=== CNVM end"
[ "$fail" = 0 ]
