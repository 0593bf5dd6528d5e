#!/usr/bin/env bash
# make demo: a one-board pool on a temporary data dir. Starts `cardnode server`, runs an
# 8-task array job, shows `ps`, a task's logs and a few lines of /metrics, then stops
# the server with SIGTERM (a clean stop), checks the data dir with `fsck` and removes it.
set -euo pipefail
bin=${1:-build/release/cli/cardnode}
[ -x "$bin" ] || { echo "demo: $bin not built (run make build)" >&2; exit 2; }
bin=$(realpath "$bin")
# Tasks start in the submitter's directory; as root they run as an unprivileged user
# (nobody, or cardnode-task), who may not enter this one: submit from a shared place.
cd /tmp
data=$(mktemp -d /tmp/cardnode-demo.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"; wait "$server_pid" || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say "cardnode server --data-dir $data --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 &"
"$bin" server --data-dir "$data" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 &
server_pid=$!
for _ in $(seq 100); do [ -s "$data/addr" ] && break; sleep 0.1; done
[ -s "$data/addr" ] || { echo "demo: server did not start" >&2; exit 1; }

cn() { "$bin" --data-dir "$data" "$@"; }

say "cardnode nodes"
cn nodes
say "cardnode run --count 8 --cpu 0.5 --mem 32M --wait -- sh -c 'echo task \$CARDNODE_TASK_INDEX of \$CARDNODE_TASK_COUNT on \$CARDNODE_NODE'"
cn run --count 8 --cpu 0.5 --mem 32M --wait -- \
  sh -c 'echo task $CARDNODE_TASK_INDEX of $CARDNODE_TASK_COUNT on $CARDNODE_NODE; sleep 0.2'
say "cardnode ps"
cn ps
say "cardnode ps 1"
cn ps 1
say "for i in 0 1 2 3 4 5 6 7; do cardnode logs 1.\$i; done"
for i in 0 1 2 3 4 5 6 7; do cn logs "1.$i"; done
say "cardnode run --wait -- sh -c 'echo oops >&2; exit 3'   # exit code comes back"
set +e
cn run --wait -- sh -c 'echo oops >&2; exit 3'
echo "exit code: $?"
set -e
say "cardnode logs 2 --stderr"
cn logs 2 --stderr
say "cardnode run --wait -- id   # as root, tasks run as an unprivileged user"
cn run --wait -- id
say "cardnode ps --json"
cn ps --json

metrics=$(cat "$data/metrics_addr")
say "GET http://$metrics/metrics | grep ^cardnode_   # what Prometheus scrapes"
exec 3<>"/dev/tcp/${metrics%:*}/${metrics##*:}"
printf 'GET /metrics HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
grep -E '^cardnode_(jobs_submitted_total|tasks\{|process_resident|storage_bytes_written|build_info)' <&3 || true
exec 3>&-

say "kill -TERM <server>   # clean stop"
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=
echo "server stopped cleanly"
say "cardnode fsck $data   # the durable state: snapshots and WAL, checked without changing them"
"$bin" fsck "$data"
