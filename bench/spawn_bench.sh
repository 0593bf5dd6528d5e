#!/usr/bin/env bash
# spawn_bench.sh [CARDNODE_BIN | BUILD_DIR]
#
# The spawn path end to end, in one run, beside the floor a process launcher cannot beat:
#
#   floor      two bare spawns of /bin/true in sequence (the client's and the task's), timed
#              by a Python harness around os.posix_spawn + waitpid (glibc's posix_spawn is a
#              CLONE_VM|CLONE_VFORK clone, the cheapest spawn there is); median of N
#   run --wait `cardnode --data-dir D run --wait -- /bin/true`, same harness, median of N,
#              and its ratio to the floor (goal <= 2.0x)
#   --version  `cardnode --version` against one bare /bin/true spawn: the client's own start
#              (exec, dynamic loading, static constructors, argument parsing)
#   breakdown  where a run --wait goes, from strace timestamps (below)
#   array      `cardnode run --count ARRAY --wait -- /bin/true` against
#              `seq ARRAY | xargs -P$(nproc) -I{} /bin/true` (ARRAY spawns of /bin/true, as
#              many at once as there are CPUs; cardnode's default --cpu 1 runs as many at once
#              on a server's own board), wall time -> tasks/s and the ratio, once with a cgroup
#              per task (the default as root) and once on a server started with
#              CARDNODE_NO_CGROUPS=1 (rlimits only; goals >= 0.5x and >= 0.8x)
#   memory     executor memory per running task: VmRSS and RssAnon (/proc/PID/status) of the
#              server (its own executor) idle, then with K `sleep` tasks running, delta / K in
#              KiB; then the same for an agent (server --no-exec + one agent) (goal <= 64 KiB)
#
# The timed loops interleave their commands (floor, one spawn, --version, run --wait, then
# again), N rounds after 2 uncounted ones, so a slow spell of this shared machine hits all
# of them, and each command starts after a pause (PAUSE_MS), as when a person runs one
# command at a time. The pause matters: back to back, successive tasks share the kernel's
# work of a cgroup-v1 attach (writing a pid to cgroup.procs waits for an RCU grace period,
# unless another attach ended moments before) and find the CPUs awake; one back-to-back
# loop of the floor and run --wait is shown as well. Compare ratios from one run, not
# absolute times across runs.
#
# Breakdown method. A fresh server (cgroups as by default) is started under
#   strace -f --seccomp-bpf -ttt -T -y -e trace=clone,clone3,fork,vfork,execve,exit_group,
#          write,sendto,sendmsg,writev
# and each of TRACE_RUNS clients under strace with execve,openat,connect,sendto,recvfrom,
# write,exit_group. --seccomp-bpf stops a process only at the syscalls named, so the rest
# run untraced; every stop still costs tens of µs, which is why the traced total is shown
# beside the untraced median. Both traces share one clock (-ttt). Markers, in order:
#   client execve -> client opens DATA_DIR/addr      client start: exec, dynamic loading,
#                    (or connects to api.sock)        static init, argument parsing
#   -> client connect()                               token, OpenSSL config, SSL_CTX
#   -> client's first recvfrom with data              TCP connect + TLS handshake (the
#                                                     server's one flight; the client then
#                                                     sends Finished and the submit at once)
#   (a client with --data-dir on the server's board goes through DATA_DIR/api.sock: no
#   addr, token, TLS context or handshake, so those two segments are 0)
#   -> server writes the submit's reply               submit: the job's WAL record durable
#   -> server's fork (clone)                          ack -> spawn: scheduling turn,
#                                                     TaskStarted durable, cgroup mkdirs,
#                                                     log files (a held start, on an idle
#                                                     board, clones before TaskStarted is
#                                                     durable: this segment shrinks, and the
#                                                     next one holds the wait for the record)
#   -> child execs `cardnode __task-exec`             fork in the server, child's fd set-up
#   -> trampoline execs /bin/true                     trampoline: the cardnode binary's exec
#                                                     and dynamic loading, joining the task's
#                                                     cgroups (shown apart: the -T time of its
#                                                     writes to cgroup.procs), rlimits
#   -> /bin/true's exit_group                         the task itself
#   -> server writes the WaitJob reply                reap, cgroup rmdir, TaskFinished durable
#   -> client exits                                   receive, print, exit
# Each segment is the median over TRACE_RUNS runs. The server's WAL writes and fdatasyncs go
# through io_uring and do not show in strace; their time is inside the submit, ack -> spawn
# and exit -> reply segments.
#
# Output: the table on stdout, then one line per figure:
#   result tool=spawn_bench figure=NAME value=X unit=U [n=N min=.. max=..]
# Progress goes to stderr. Installs strace if it is missing (apt-get; root or sudo), and
# nothing else. Every server it starts is stopped on exit, the temp dir removed (KEEP_TMP=1
# keeps it, with every server's log and the strace files).
#
# Environment: SPAWN_N (21) rounds of the timed loop; SPAWN_PAUSE_MS (100) before each timed
# command and each traced run; SPAWN_ARRAY (2000) tasks in the array;
# SPAWN_ARRAY_ROUNDS (2) alternating xargs/cardnode rounds per configuration (median);
# SPAWN_TRACE_RUNS (5) traced runs for the breakdown; SPAWN_MEM_TASKS (200) tasks for the
# memory figure; SPAWN_SKIP (e.g. "agent,nocg") leaves out stages: lat, breakdown, array,
# nocg, mem, agent. TMPDIR is where the data dirs go (on tmpfs fdatasync costs nothing).
set -euo pipefail

# shellcheck source=idle_rss.sh
source "$(dirname "${BASH_SOURCE[0]}")/idle_rss.sh"

N=${SPAWN_N:-21}
ARRAY=${SPAWN_ARRAY:-2000}
ARRAY_ROUNDS=${SPAWN_ARRAY_ROUNDS:-2}
TRACE_RUNS=${SPAWN_TRACE_RUNS:-5}
MEM_TASKS=${SPAWN_MEM_TASKS:-200}
PAUSE_MS=${SPAWN_PAUSE_MS:-100}
SKIP=${SPAWN_SKIP:-}
NPROC=$(nproc)

SB_PY=""          # the Python harness (written into PB_TMP)
SB_RESULTS=""     # result lines collected over the run
SB_STRACE_PID=""  # strace wrapping the breakdown's server

skip() { [[ ",$SKIP," == *",$1,"* ]]; }

sb_cleanup() {
  local rc=$? p
  set +e
  cardnode_stop
  if [[ -n "$SB_STRACE_PID" ]]; then
    # the server under strace, if PB_CN_PID never got its pid
    for p in $(pgrep -P "$SB_STRACE_PID"); do stop_pid "$p" "cardnode server"; done
    stop_pid "$SB_STRACE_PID" strace
    SB_STRACE_PID=""
  fi
  (exit "$rc")
  pb_cleanup
}

# sb_server_start [SERVER_ARGS...]: like cardnode_start, with SB_WRAP (an array) in front of
# the server: `env CARDNODE_NO_CGROUPS=1` or strace. PB_CN_PID is the server's own pid.
SB_WRAP=()
sb_server_start() {
  local i wrapper_pid pid=""
  CN_DIR=$PB_TMP/cardnode-$RANDOM
  mkdir -p "$CN_DIR"
  "${SB_WRAP[@]}" "$CN_BIN" server --data-dir "$CN_DIR" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 "$@" >"$CN_DIR.out" 2>&1 &
  wrapper_pid=$!
  for ((i = 0; i < 200; i++)); do
    [[ -s "$CN_DIR/addr" ]] && break
    kill -0 "$wrapper_pid" 2>/dev/null || { cat "$CN_DIR.out" >&2; die "cardnode server exited during startup"; }
    sleep 0.05
  done
  [[ -s "$CN_DIR/addr" ]] || { cat "$CN_DIR.out" >&2; die "cardnode server did not write $CN_DIR/addr within 10 s"; }
  if [[ "${SB_WRAP[0]:-}" == strace ]]; then
    SB_STRACE_PID=$wrapper_pid
    for ((i = 0; i < 50; i++)); do  # strace's one child is the server
      pid=$(pgrep -P "$wrapper_pid" | head -1) || true
      [[ -n "$pid" ]] && break
      sleep 0.1
    done
    [[ -n "$pid" ]] || die "no cardnode server under strace (pid $wrapper_pid)"
    PB_CN_PID=$pid
  else
    PB_CN_PID=$wrapper_pid  # `env` execs the server: same pid
  fi
}

sb_server_stop() {
  cardnode_stop
  if [[ -n "$SB_STRACE_PID" ]]; then
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$SB_STRACE_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$SB_STRACE_PID" strace
    SB_STRACE_PID=""
  fi
}

# isolation: what `nodes --json` says the server's board enforces (cgroup-v1, rlimit, ...).
isolation() {
  cn nodes --json | python3 -c 'import json,sys; print(",".join(n.get("isolation","?") for n in json.load(sys.stdin)["nodes"]))'
}

# The harness: timing loops, the strace parser, the table.
write_harness() {
  SB_PY=$PB_TMP/spawn_harness.py
  cat >"$SB_PY" <<'PYEOF'
import json, os, re, statistics, sys, time

FA = [(os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
      (os.POSIX_SPAWN_OPEN, 1, '/dev/null', os.O_WRONLY, 0),
      (os.POSIX_SPAWN_OPEN, 2, '/dev/null', os.O_WRONLY, 0)]

def spawn_wait(argv):
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=FA)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)

def timed(seq):
    t0 = time.perf_counter_ns()
    for argv in seq:
        rc = spawn_wait(argv)
        if rc != 0:
            sys.exit(f"harness: {argv} exited {rc}")
    return time.perf_counter_ns() - t0

def result(figure, value, unit, **kw):
    extra = "".join(f" {k}={v}" for k, v in kw.items())
    print(f"result tool=spawn_bench figure={figure} value={value} unit={unit}{extra}")

def lat(spec_json, n, pause_ms):
    # spec: [[name, [argv, argv...]], ...] timed in turn, round after round, each after a
    # pause of pause_ms
    spec = json.loads(spec_json)
    samples = {name: [] for name, _ in spec}
    for r in range(n + 2):
        for name, seq in spec:
            if pause_ms > 0:
                time.sleep(pause_ms / 1e3)
            ns = timed(seq)
            if r >= 2:
                samples[name].append(ns / 1e6)
    med = {}
    for name, _ in spec:
        s = samples[name]
        med[name] = statistics.median(s)
        result(name + "_ms", f"{med[name]:.2f}", "ms", n=len(s), min=f"{min(s):.2f}", max=f"{max(s):.2f}",
               pause_ms=pause_ms)
    return med

def cmd_lat(args):
    n = int(args[0]); pause_ms = int(args[1]); spec = args[2]; ratios = args[3:]
    med = lat(spec, n, pause_ms)
    for r in ratios:  # a/b
        a, b = r.split("/")
        result(f"{a}_over_{b}", f"{med[a] / med[b]:.2f}", "x")

def cmd_wall(args):
    t0 = time.perf_counter_ns()
    rc = spawn_wait(args)
    s = (time.perf_counter_ns() - t0) / 1e9
    if rc != 0:
        sys.exit(f"harness: {args} exited {rc}")
    print(f"{s:.3f}")

LINE = re.compile(r'^(\d+)\s+(\d+\.\d+)\s+(.*)$')
DUR = re.compile(r'<(\d+\.\d+)>\s*$')
RET = re.compile(r'\)\s+=\s+(-?\d+)')

def parse(path):
    ev = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if m:
                ev.append((int(m.group(1)), float(m.group(2)), m.group(3)))
    return ev

def syscall_name(rest):
    m = re.match(r'(?:<\.\.\. )?([a-z0-9_]+)', rest)
    return m.group(1) if m else ""

def durations(ev, pid, pred):
    # -T time of the calls of pid matching pred; a call split by <unfinished ...> takes its
    # time from the "resumed" line.
    total = 0.0; pending = False
    for p, ts, rest in ev:
        if p != pid:
            continue
        if pending and rest.startswith("<..."):
            m = DUR.search(rest)
            if m: total += float(m.group(1))
            pending = False
            continue
        if pred(rest):
            if "<unfinished ...>" in rest:
                pending = True
            else:
                m = DUR.search(rest)
                if m: total += float(m.group(1))
    return total

def one_breakdown(cev, sev):
    first = lambda evs, pred: next((e for e in evs if pred(e)), None)
    c0 = cev[0][1]
    cend = [e for e in cev if e[2].startswith("+++ exited")][-1][1]
    conn = first(cev, lambda e: e[2].startswith("connect("))
    c2 = conn[1]
    # Through DATA_DIR/api.sock (the server's local socket) the client reads no addr or
    # token and makes no TLS context or handshake: those segments are 0.
    local = "AF_UNIX" in conn[2]
    opened = first(cev, lambda e: e[2].startswith("openat(") and '/addr"' in e[2])
    c1 = c2 if local or opened is None else opened[1]
    recvs = [e for e in cev if e[2].startswith("recvfrom(") and (m := RET.search(e[2])) and int(m.group(1)) > 0]
    c3 = c2 if local else recvs[0][1]
    sub = first(cev, lambda e: e[2].startswith("write(2") and "submitted" in e[2])[1]
    c4 = [e for e in recvs if e[1] < sub][-1][1]
    fin = [e for e in cev if e[2].startswith("write(2") and "cardnode: job" in e[2]][-1][1]
    c5 = [e for e in recvs if e[1] < fin][-1][1]
    win = [e for e in sev if c0 <= e[1] <= cend]
    sock = [e for e in win if syscall_name(e[2]) in ("write", "sendto", "sendmsg", "writev") and any(k in e[2].split(",")[0] for k in ("socket:[", "TCP", "UNIX"))]
    s_ack = [e for e in sock if e[1] < c4][-1][1]
    s_reply = [e for e in sock if e[1] <= c5][-1][1]
    # The task's clone (CLONE_VFORK), not the spawn thread's creation on a first start. A
    # held start (an idle board) clones while the submit's records are on their way to disk,
    # often before the ack: then "ack -> clone" is 0 and the held child's wait for its
    # release counts in "fork -> exec", from the ack on.
    c_sub = first(cev, lambda e: e[2].startswith("sendto(") and e[1] >= c3)[1]
    s_clone = first(win, lambda e: e[1] >= c_sub and syscall_name(e[2]) in ("clone", "clone3", "fork", "vfork") and "CLONE_THREAD" not in e[2])[1]
    s_spawned = max(s_clone, s_ack)
    # Before: a `cardnode __task-exec` trampoline between the fork and the task's exec.
    # Now: the clone child joins the cgroups, drops privileges and execs the task itself.
    ex1 = first(win, lambda e: e[2].startswith("execve(") and "__task-exec" in e[2])
    if ex1 is None:
        ex2 = first(win, lambda e: e[1] >= s_clone and e[2].startswith('execve("/bin/true"'))
        ex1 = ex2
    child = ex1[0]
    ex2 = first(win, lambda e: e[0] == child and e[2].startswith('execve("/bin/true"'))
    ex_end = first(win, lambda e: e[0] == child and e[1] > ex2[1] and (e[2].startswith("exit_group(") or e[2].startswith("+++ exited")))
    cg = durations(win, child, lambda r: r.startswith("write(") and "cgroup.procs" in r.split(",")[0]) * 1e3
    ms = lambda a, b: (b - a) * 1e3
    return [
        ("bd_client_start", "client start: exec, loading, init, args", ms(c0, c1)),
        ("bd_client_setup", "client: token, OpenSSL config, SSL_CTX (0: local socket)", ms(c1, c2)),
        ("bd_connect_tls", "TCP connect + TLS handshake (0: local socket)", ms(c2, c3)),
        ("bd_submit", "submit round trip (job durable)", ms(c3, s_ack)),
        ("bd_ack_to_fork", "ack -> clone (TaskStarted durable, logs, spawn thread: cgroups)", ms(s_ack, s_spawned)),
        ("bd_fork_to_exec", "fork (or ack, if later) -> task exec (cgroups joined, released)", ms(s_spawned, ex1[1])),
        ("bd_trampoline", "trampoline (exec+loading+cgroup join; now 0)", ms(ex1[1], ex2[1])),
        ("bd_cgroup_join", "  of which writes to cgroup.procs", cg),
        ("bd_task", "task: /bin/true exec -> exit", ms(ex2[1], ex_end[1])),
        ("bd_exit_to_reply", "exit -> reply (reap, TaskFinished durable)", ms(ex_end[1], s_reply)),
        ("bd_reply_to_exit", "reply -> client exit", ms(s_reply, cend)),
        ("bd_traced_total", "traced total (client execve -> exit)", ms(c0, cend)),
    ]

def cmd_breakdown(args):
    server = parse(args[0])
    rows = {}
    names = []
    for cpath in args[1:]:
        try:
            segs = one_breakdown(parse(cpath), server)
        except (TypeError, IndexError, AttributeError) as exc:
            print(f"harness: could not read the markers of {cpath}: {exc!r}", file=sys.stderr)
            continue
        for key, label, v in segs:
            if key not in rows:
                rows[key] = (label, []); names.append(key)
            rows[key][1].append(v)
    for key in names:
        label, vals = rows[key]
        result(key + "_ms", f"{statistics.median(vals):.2f}", "ms", n=len(vals),
               min=f"{min(vals):.2f}", max=f"{max(vals):.2f}", label='"' + label + '"')

def cmd_table(args):
    res = {}
    labels = {}
    for line in open(args[0]):
        m = re.match(r'result tool=spawn_bench figure=(\S+) value=(\S+) unit=(\S+)(.*)$', line)
        if not m: continue
        res[m.group(1)] = (m.group(2), m.group(3), m.group(4))
        lm = re.search(r'label="([^"]*)"', m.group(4))
        if lm: labels[m.group(1)] = lm.group(1)
    def v(k): return res[k][0] if k in res else "-"
    def mm(k):
        if k not in res: return ""
        e = dict(re.findall(r'(\w+)=(\S+)', res[k][2]))
        return f"{e.get('min','?')}-{e.get('max','?')}" if "min" in e else ""
    def row(a, b, c="", d=""): print(f"{a:<58} {b:>12} {c:>14} {d}")
    print()
    row(f"figure (each run after a {v('pause_ms')} ms pause)", "median", "min-max", "")
    row("-" * 58, "-" * 12, "-" * 14)
    if "floor_ms" in res:
        row("floor: /bin/true; /bin/true (ms)", v("floor_ms"), mm("floor_ms"))
        row("one /bin/true spawn (ms)", v("one_spawn_ms"), mm("one_spawn_ms"))
        row("cardnode --version (ms)", v("version_ms"), mm("version_ms"))
        row("  --version / one spawn", v("version_over_one_spawn"), "", "x")
        row("cardnode run --wait -- /bin/true (ms)", v("run_wait_ms"), mm("run_wait_ms"))
        row("  run --wait / floor (goal <= 2.0)", v("run_wait_over_floor"), "", "x")
    if "b2b_run_wait_ms" in res:
        row("back to back, no pause: floor (ms)", v("b2b_floor_ms"), mm("b2b_floor_ms"))
        row("back to back: run --wait (ms)", v("b2b_run_wait_ms"), mm("b2b_run_wait_ms"))
        row("  run --wait / floor", v("b2b_run_wait_over_b2b_floor"), "", "x")
    if "nocg_run_wait_ms" in res:
        row("CARDNODE_NO_CGROUPS=1 server: floor (ms)", v("nocg_floor_ms"), mm("nocg_floor_ms"))
        row("CARDNODE_NO_CGROUPS=1 server: run --wait (ms)", v("nocg_run_wait_ms"), mm("nocg_run_wait_ms"))
        row("  / floor of the same loop", v("nocg_run_wait_over_nocg_floor"), "", "x")
    bd = [k for k in res if k.startswith("bd_")]
    if bd:
        print()
        row("breakdown of run --wait under strace (ms)", "median", "min-max")
        for k in bd:
            row(labels.get(k, k), v(k), mm(k))
    for cfg, title in (("cg", "cgroup per task"), ("nocg", "CARDNODE_NO_CGROUPS=1")):
        if f"array_{cfg}_cardnode_tasks_per_s" in res:
            print()
            row(f"array of {v('array_size')} x /bin/true, {title}", "tasks/s", "wall s")
            row("  cardnode run --count --wait", v(f"array_{cfg}_cardnode_tasks_per_s"), v(f"array_{cfg}_cardnode_s"))
            row(f"  xargs -P{v('nproc')} -I{{}} /bin/true", v(f"array_{cfg}_xargs_tasks_per_s"), v(f"array_{cfg}_xargs_s"))
            goal = "0.5" if cfg == "cg" else "0.8"
            row(f"  cardnode / xargs (goal >= {goal})", v(f"array_{cfg}_ratio"), "", "x")
    for who in ("server", "agent"):
        if f"mem_{who}_rssanon_per_task_kib" in res:
            print()
            row(f"memory, {who} executor, {v('mem_tasks')} sleep tasks running", "RssAnon", "VmRSS")
            row("  idle (kB)", v(f"mem_{who}_idle_rssanon_kb"), v(f"mem_{who}_idle_vmrss_kb"))
            row("  running (kB)", v(f"mem_{who}_busy_rssanon_kb"), v(f"mem_{who}_busy_vmrss_kb"))
            row("  per running task (KiB; goal <= 64)", v(f"mem_{who}_rssanon_per_task_kib"), v(f"mem_{who}_vmrss_per_task_kib"))
    print()

def cmd_running(args):
    # running JOB_JSON K: exit 0 when the job has K tasks running
    d = json.load(sys.stdin)
    job = d["jobs"][0] if "jobs" in d else d
    n = job.get("states", {}).get("running", 0)
    print(n)

{"lat": cmd_lat, "wall": cmd_wall, "breakdown": cmd_breakdown, "table": cmd_table,
 "running": cmd_running}[sys.argv[1]](sys.argv[2:])
PYEOF
}

py() { python3 "$SB_PY" "$@"; }
res() { printf 'result tool=spawn_bench figure=%s value=%s unit=%s\n' "$1" "$2" "$3" >>"$SB_RESULTS"; }

# --- stages ------------------------------------------------------------------------------

# stage_lat PREFIX PAUSE_MS: floor, one spawn, --version and run --wait against the current
# server, interleaved, each after a pause. PREFIX "" names the figures plainly; "nocg_" (the
# second server) and "b2b_" (no pause) time the floor and run --wait only.
stage_lat() {
  local p=$1 pause=$2 spec
  if [[ -z "$p" ]]; then
    spec=$(python3 -c 'import json,sys; b,d=sys.argv[1:3]; t="/bin/true"; print(json.dumps([
      ["floor", [[t],[t]]], ["one_spawn", [[t]]], ["version", [[b,"--version"]]],
      ["run_wait", [[b,"--data-dir",d,"run","--wait","--",t]]]]))' "$CN_BIN" "$CN_DIR")
    py lat "$N" "$pause" "$spec" run_wait/floor version/one_spawn >>"$SB_RESULTS"
  else
    spec=$(python3 -c 'import json,sys; b,d,p=sys.argv[1:4]; t="/bin/true"; print(json.dumps([
      [p+"floor", [[t],[t]]], [p+"run_wait", [[b,"--data-dir",d,"run","--wait","--",t]]]]))' \
      "$CN_BIN" "$CN_DIR" "$p")
    py lat "$N" "$pause" "$spec" "${p}run_wait/${p}floor" >>"$SB_RESULTS"
  fi
}

# stage_array CFG: ARRAY_ROUNDS rounds of xargs then cardnode against the current server.
stage_array() {
  local cfg=$1 r xs=() cs=() x c
  for ((r = 0; r < ARRAY_ROUNDS; r++)); do
    x=$(py wall /bin/sh -c "seq $ARRAY | xargs -P$NPROC -I{} /bin/true")
    c=$(py wall "$CN_BIN" --data-dir "$CN_DIR" run --count "$ARRAY" --wait -- /bin/true)
    log "  array $cfg round $((r + 1)): xargs ${x} s, cardnode ${c} s"
    xs+=("$x"); cs+=("$c")
  done
  python3 - "$cfg" "$ARRAY" "${xs[*]}" "${cs[*]}" >>"$SB_RESULTS" <<'EOF'
import statistics, sys
cfg, n, xs, cs = sys.argv[1], int(sys.argv[2]), [float(v) for v in sys.argv[3].split()], [float(v) for v in sys.argv[4].split()]
x, c = statistics.median(xs), statistics.median(cs)
def r(f, v, u): print(f"result tool=spawn_bench figure={f} value={v} unit={u} rounds={len(xs)}")
r(f"array_{cfg}_xargs_s", f"{x:.2f}", "s"); r(f"array_{cfg}_cardnode_s", f"{c:.2f}", "s")
r(f"array_{cfg}_xargs_tasks_per_s", f"{n / x:.0f}", "tasks/s")
r(f"array_{cfg}_cardnode_tasks_per_s", f"{n / c:.0f}", "tasks/s")
r(f"array_{cfg}_ratio", f"{x / c:.2f}", "x")
EOF
}

per_task() { awk -v a="$1" -v b="$2" -v k="$MEM_TASKS" 'BEGIN { printf "%.1f", (b - a) / k }'; }

# stage_mem WHO PID: RSS of PID idle, then with MEM_TASKS `sleep` tasks running on it.
stage_mem() {
  local who=$1 pid=$2 idle_anon idle_rss busy_anon busy_rss job i running kids
  sleep 1
  idle_anon=$(rss_kb "$pid" RssAnon); idle_rss=$(rss_kb "$pid" VmRSS)
  # 5 millicores and 16 MB each so MEM_TASKS fit on one board at once.
  job=$(cn run --count "$MEM_TASKS" --cpu 5m --mem 16M -- sleep 600)
  running=0
  for ((i = 0; i < 1200; i++)); do
    running=$(cn ps "$job" --json | py running)
    kids=$(pgrep -c -P "$pid" -x sleep || true)
    [[ "$running" == "$MEM_TASKS" && "$kids" == "$MEM_TASKS" ]] && break
    sleep 0.1
  done
  [[ "$running" == "$MEM_TASKS" && "$kids" == "$MEM_TASKS" ]] \
    || die "$who: $running of $MEM_TASKS tasks running ($kids sleep children) after 120 s"
  sleep 2
  busy_anon=$(rss_kb "$pid" RssAnon); busy_rss=$(rss_kb "$pid" VmRSS)
  cn cancel "$job" >/dev/null
  for ((i = 0; i < 600; i++)); do
    [[ "$(pgrep -c -P "$pid" -x sleep || true)" == 0 ]] && break
    sleep 0.1
  done
  {
    res "mem_${who}_idle_rssanon_kb" "$idle_anon" kB
    res "mem_${who}_idle_vmrss_kb" "$idle_rss" kB
    res "mem_${who}_busy_rssanon_kb" "$busy_anon" kB
    res "mem_${who}_busy_vmrss_kb" "$busy_rss" kB
    res "mem_${who}_rssanon_per_task_kib" "$(per_task "$idle_anon" "$busy_anon")" KiB
    res "mem_${who}_vmrss_per_task_kib" "$(per_task "$idle_rss" "$busy_rss")" KiB
  }
}

stage_breakdown() {
  local i traces=() f
  # shellcheck disable=SC2054  # the commas separate strace's syscall names
  SB_WRAP=(strace -f --seccomp-bpf -ttt -T -y -o "$PB_TMP/server.strace"
           -e trace=clone,clone3,fork,vfork,execve,exit_group,write,sendto,sendmsg,writev)
  sb_server_start
  SB_WRAP=()
  cn run --wait -- /bin/true >/dev/null 2>&1 || die "warm-up job failed"
  for ((i = 0; i < TRACE_RUNS; i++)); do
    sleep "$(awk -v m="$PAUSE_MS" 'BEGIN { print m / 1000 }')"
    f=$PB_TMP/client-$i.strace
    strace -f --seccomp-bpf -ttt -T -y -o "$f" \
      -e trace=execve,openat,connect,sendto,recvfrom,write,exit_group \
      "$CN_BIN" --data-dir "$CN_DIR" run --wait -- /bin/true >/dev/null 2>&1 \
      || die "traced run --wait failed"
    traces+=("$f")
  done
  sb_server_stop
  py breakdown "$PB_TMP/server.strace" "${traces[@]}" >>"$SB_RESULTS"
}

main() {
  [[ $# -le 1 ]] || die "usage: $0 [CARDNODE_BIN | BUILD_DIR]"
  local arg=${1:-}
  if [[ -n "$arg" && -d "$arg" ]]; then arg=$arg/cli/cardnode; fi
  CN_BIN=$(resolve_bin "$arg")
  command -v python3 >/dev/null || die "python3 is needed"
  skip breakdown || pb_install strace
  pb_init
  trap sb_cleanup EXIT
  write_harness
  SB_RESULTS=$PB_TMP/results
  : >"$SB_RESULTS"
  res nproc "$NPROC" cpus
  res array_size "$ARRAY" tasks
  res mem_tasks "$MEM_TASKS" tasks
  res pause_ms "$PAUSE_MS" ms

  echo "spawn_bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $NPROC CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cardnode: $CN_BIN ($(stat -c %s "$CN_BIN") bytes, $(ldd "$CN_BIN" | wc -l) lines of ldd)"
  echo "data dirs on: $(df -PT "$PB_TMP" | awk 'NR==2 { print $1, $2 }') ($PB_TMP)"
  echo "N=$N PAUSE_MS=$PAUSE_MS ARRAY=$ARRAY ARRAY_ROUNDS=$ARRAY_ROUNDS TRACE_RUNS=$TRACE_RUNS MEM_TASKS=$MEM_TASKS"

  # 1. The server as it starts by default (cgroups as root), executing on its own board.
  sb_server_start
  cn run --wait -- /bin/true >/dev/null 2>&1 || die "warm-up job failed"
  echo "server isolation: $(isolation)"
  # Memory first, while the heap has not yet grown for (and kept the pages of) the array.
  if ! skip mem; then log "memory: $MEM_TASKS tasks on the server"; stage_mem server "$PB_CN_PID"; fi
  if ! skip lat; then
    log "timed loop: $N rounds, ${PAUSE_MS} ms pause"; stage_lat "" "$PAUSE_MS"
    log "timed loop: $N rounds, back to back"; stage_lat b2b_ 0
  fi
  if ! skip array; then log "array of $ARRAY, cgroups"; stage_array cg; fi
  sb_server_stop

  # 2. Under strace, for the breakdown.
  if ! skip breakdown; then log "breakdown: $TRACE_RUNS traced runs"; stage_breakdown; fi

  # 3. Without cgroups (the server reads CARDNODE_NO_CGROUPS, "1" exactly).
  if ! skip nocg; then
    SB_WRAP=(env CARDNODE_NO_CGROUPS=1)
    sb_server_start
    SB_WRAP=()
    cn run --wait -- /bin/true >/dev/null 2>&1 || die "warm-up job failed"
    echo "server with CARDNODE_NO_CGROUPS=1, isolation: $(isolation)"
    if ! skip lat; then log "timed loop without cgroups: $N rounds"; stage_lat nocg_ "$PAUSE_MS"; fi
    if ! skip array; then log "array of $ARRAY, no cgroups"; stage_array nocg; fi
    sb_server_stop
  fi

  # 4. An agent's executor: server --no-exec and one agent.
  if ! skip agent && ! skip mem; then
    sb_server_start --no-exec
    agent_start
    log "memory: $MEM_TASKS tasks on an agent"
    stage_mem agent "$PB_AGENT_PID"
    sb_server_stop
  fi

  py table "$SB_RESULTS"
  grep -v 'figure=\(nproc\|array_size\|mem_tasks\|pause_ms\) ' "$SB_RESULTS"
}

main "$@"
