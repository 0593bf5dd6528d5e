#!/usr/bin/env python3
"""run_wait_ab.py N BIN [BIN...]: `run --wait -- /bin/true` of several cardnode binaries
against one floor, in one interleaved loop.

Each round, after a 100 ms pause before every command: the floor (two bare spawns of
/bin/true in sequence, as bench/spawn_bench.sh measures it), then `BIN --data-dir D_i run
--wait -- /bin/true` for each binary against its own server (one per binary, cgroups as
by default, data dirs on TMPDIR or /tmp). 2 rounds uncounted, N counted; medians. Timing as
spawn_bench.sh does it: perf_counter_ns around os.posix_spawn + waitpid.

Why beside spawn_bench.sh: its runs measure one binary each, and the floor of this VM moves
by 20% between runs minutes apart; here every binary meets the same floor in the same
rounds, so a before/after ratio is read from one line.

Output, one line per run:
  floor F ms  NAME1 T1 ms = R1x  NAME2 T2 ms = R2x ...
Every server it starts is stopped on exit, its data dir removed.
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PAUSE_S = 0.1
WARMUP = 2


def spawn_wait(argv, devnull):
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1),
                                       (os.POSIX_SPAWN_DUP2, devnull, 2)])
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"run_wait_ab: {' '.join(argv)} exited with status {status}")
    return (time.perf_counter_ns() - t0) / 1e6


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    n = int(sys.argv[1])
    bins = [os.path.abspath(b) for b in sys.argv[2:]]
    root = tempfile.mkdtemp(prefix="cardnode-ab.")
    servers = []
    try:
        dirs = []
        for i, b in enumerate(bins):
            d = os.path.join(root, str(i))
            os.makedirs(d)
            servers.append(subprocess.Popen(
                [b, "server", "--data-dir", d, "--listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            dirs.append(d)
        for d in dirs:  # bounded: 10 s per server
            for _ in range(200):
                if os.path.exists(os.path.join(d, "api.sock")):
                    break
                time.sleep(0.05)
            else:
                raise SystemExit(f"run_wait_ab: no server came up in {d}")
        devnull = os.open(os.devnull, os.O_WRONLY)
        floor, runs = [], [[] for _ in bins]
        for r in range(n + WARMUP):
            time.sleep(PAUSE_S)
            f = spawn_wait(["/bin/true"], devnull) + spawn_wait(["/bin/true"], devnull)
            took = []
            for b, d in zip(bins, dirs):
                time.sleep(PAUSE_S)
                took.append(spawn_wait([b, "--data-dir", d, "run", "--wait", "--", "/bin/true"],
                                       devnull))
            if r >= WARMUP:
                floor.append(f)
                for i, t in enumerate(took):
                    runs[i].append(t)
        fm = statistics.median(floor)
        line = f"floor {fm:.2f} ms"
        for b, ts in zip(bins, runs):
            m = statistics.median(ts)
            line += f"  {os.path.basename(b)} {m:.2f} ms = {m / fm:.2f}x"
        print(line, flush=True)
    finally:
        for p in servers:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
