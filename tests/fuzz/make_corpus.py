#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/NAME/ (committed; rerun after a schema change).

Messages are encoded from protobuf text format by `protoc --encode`, so this needs only
protoc and python3. Usage: tests/fuzz/make_corpus.py (from anywhere).
"""
import hashlib, hmac, os, struct, subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, "proto")
TOKEN = b"fuzz-token-0123456789abcdef0123456789"  # as in fuzz_handshake.cc


def enc(msg, text):
    return subprocess.run(["protoc", "-I", PROTO, "--encode=cardnode.pb." + msg, "cardnode.proto"],
                          input=text.encode(), capture_output=True, check=True).stdout


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


SPEC = 'command: "sh" command: "-c" command: "echo $CARDNODE_TASK_INDEX" count: 4 ' \
       'cpu_millis: 500 mem_bytes: 67108864 retries: 1 priority: 60 name: "render" ' \
       'env { key: "LANG" value: "C" } constraints { key: "arch" value: "aarch64" } cwd: "/tmp"'
REQUESTS = {
    "submit": 'id: 1 submit { spec { %s } }' % SPEC,
    "submit_min": 'id: 2 submit { spec { command: "true" } }',
    "submit_bytes": r'id: 3 submit { spec { command: "ls" command: "caf\351" command: "a\nb\\c\"" } }',
    "list_jobs": 'id: 4 list_jobs { after_job_id: 1 max_jobs: 10 }',
    "get_job": 'id: 5 get_job { job_id: 1 first_task: 0 max_tasks: 8 }',
    "cancel": 'id: 6 cancel { job_id: 1 }',
    "list_nodes": 'id: 7 list_nodes { }',
    "wait_job": 'id: 8 wait_job { job_id: 1 }',
    "read_log": 'id: 9 read_log { job_id: 1 index: 0 stream: STDERR offset: 0 max_bytes: 4096 wait_ms: 100 }',
    "agent_hello": 'id: 10 agent_hello { identity: "pi-1-id" incarnation: 7 }',
    "agent_heartbeat": 'id: 11 agent_heartbeat { session: 3 }',
    "agent_poll": 'id: 12 agent_poll { session: 3 }',
    "agent_report": 'id: 13 agent_report { session: 3 }',
    "agent_log": 'id: 14 agent_log { session: 3 fetch_id: 1 data: "out" final: true }',
    "drain": 'id: 15 drain { node: "pi-1" deadline_ms: 1000 }',
}
requests = {k: enc("Request", v) for k, v in REQUESTS.items()}
for k, v in requests.items():
    write("fuzz_request", k, v)

# fuzz_frame: control byte (chunk-size count - 1, bit 3 = do not drain), sizes, stream.
def frame(p):
    return struct.pack(">I", len(p)) + p

write("fuzz_frame", "one_frame", bytes([0, 255]) + frame(requests["list_nodes"]))
write("fuzz_frame", "two_frames_small_chunks",
      bytes([1, 0, 4]) + frame(requests["submit"]) + frame(requests["cancel"]))
write("fuzz_frame", "partial_tail", bytes([2, 2, 7, 0]) + frame(requests["get_job"]) + b"\0\0\0\x10abc")
write("fuzz_frame", "bad_length", bytes([8, 3]) + frame(b"x") + b"\x00\x40\x00\x01" + b"y" * 8)
write("fuzz_frame", "zero_length", bytes([0, 0]) + b"\0\0\0\0")

# fuzz_handshake: mode byte, then material (see fuzz_handshake.cc).
client_nonce = bytes(range(32))
server_nonce = bytes(range(100, 132))
proof = b"CNOD\x01" + client_nonce + hmac.new(TOKEN, b"cardnode-client" + bytes(32) + client_nonce,
                                               hashlib.sha256).digest()
write("fuzz_handshake", "server_proof", b"\x00" + proof)
write("fuzz_handshake", "server_short", b"\x00CNOD\x01")
write("fuzz_handshake", "genuine_unchanged", b"\x01")
write("fuzz_handshake", "genuine_flip", b"\x01" + bytes(40) + b"\x01")
write("fuzz_handshake", "other_token", b"\x02" + b"0123456789abcdef0123456789abcdef")
write("fuzz_handshake", "same_token", b"\x02" + TOKEN)
hello = b"CNOD\x01" + server_nonce
write("fuzz_handshake", "client_reject", b"\x03" + hello + b"NO" + bytes(32))
write("fuzz_handshake", "client_accept_badmac", b"\x03" + hello + b"OK" + bytes(32))
write("fuzz_handshake", "client_bad_version", b"\x03CNOD\x02" + server_nonce)
write("fuzz_handshake", "verdict_unchanged", b"\x04")

# fuzz_wal_record: runs of (u16 little-endian length, WalRecord payload).
WAL = [
    ("node_updated", 'node_updated { node_id: 0 name: "pi-1" identity: "id-1" cpu_millis: 4000 '
                     'mem_bytes: 4000000000 labels { key: "arch" value: "aarch64" } updated_ms: 5 tasks_max: 8 }'),
    ("job_submitted", 'job_submitted { job_id: 1 submitted_ms: 10 spec { command: "true" name: "true" '
                      'count: 2 cpu_millis: 1000 mem_bytes: 134217728 priority: 50 retries: 1 } }'),
    ("task_started", 'task_started { job_id: 1 index: 0 attempt: 1 node_id: 0 started_ms: 11 }'),
    ("task_finished", 'task_finished { job_id: 1 index: 0 state: TASK_FAILED exit_code: 1 finished_ms: 12 }'),
    ("task_started_2", 'task_started { job_id: 1 index: 1 attempt: 1 node_id: 0 started_ms: 13 }'),
    ("task_lost", 'task_finished { job_id: 1 index: 1 state: TASK_LOST finished_ms: 14 requeue_free: true }'),
    ("node_drain", 'node_drain { node_id: 0 draining: true deadline_ms: 100 at_ms: 15 }'),
    ("job_cancelled", 'job_cancelled { job_id: 1 cancelled_ms: 16 }'),
    ("jobs_pruned", 'jobs_pruned { job_ids: 1 pruned_ms: 17 }'),
    ("node_removed", 'node_removed { node_id: 0 removed_ms: 18 }'),
]
def run(payloads):
    return b"".join(struct.pack("<H", len(p)) + p for p in payloads)

wal = [(k, enc("WalRecord", v)) for k, v in WAL]
for k, p in wal:
    write("fuzz_wal_record", k, run([p]))
write("fuzz_wal_record", "lifecycle", run([p for _, p in wal]))
write("fuzz_wal_record", "submit_start_finish", run([wal[0][1], wal[1][1], wal[2][1], wal[3][1]]))

# fuzz_job_json: docs/CLI.md's example and a few more shapes.
JSON = {
    "cli_md_example": '{"name": "render", "command": ["sh", "-c", "echo frame $CARDNODE_TASK_INDEX"],\n'
                      ' "count": 8, "cpuMillis": 500, "memBytes": "67108864", "retries": 1}\n',
    "snake_case": '{"command":["true"],"cpu_millis":250,"mem_bytes":1048576,"timeout_ms":"60000",'
                  '"priority":90,"after":3}',
    "env_constraints": '{"command":["env"],"env":{"A":"1","LANG":"C.UTF-8"},'
                       '"constraints":{"arch":"aarch64"},"cwd":"/srv/work","name":null}',
    "unknown_field": '{"command":["true"],"cpus":2}',
    "bad_number": '{"command":["true"],"count":-1,"memBytes":1.5}',
    "not_object": '["true"]',
    # Was undefined behaviour (a double of 2^64 converted to uint64): cli/parse_test.cc.
    "regress_mem_bytes_2pow64": '{"command":["true"],"memBytes":18446744073709551616}',
    "escapes": '{"command":["printf","caf\\u00e9\\n\\"q\\""],"name":"\\ud83d\\ude00"}',
}
for k, v in JSON.items():
    write("fuzz_job_json", k, v.encode())

# fuzz_channel: mode byte, chunk byte, then material (see fuzz_channel.cc). The genuine
# handshakes are made inside the target; these seeds reach each mode and both outcomes.
CHANNEL = {
    "server_record_header": bytes([0, 255]) + b"\x16\x03\x01\x00\x30" + bytes(48),
    "server_http_probe": bytes([0, 7]) + b"GET /metrics HTTP/1.1\r\n\r\n",
    "hello_unchanged_byte_by_byte": bytes([1, 0]) + bytes(320),
    "hello_flipped": bytes([1, 63]) + bytes(40) + b"\x01" + bytes(100),
    "record_unchanged": bytes([2, 255]) + bytes(40),
    "record_tag_flipped": bytes([2, 4]) + bytes(30) + b"\x80",
    "record_length_flipped": bytes([2, 255]) + b"\x00\x00\x00\x01",
    "client_alert": bytes([3, 255]) + b"\x15\x03\x03\x00\x02\x02\x33",
    "client_server_hello_start": bytes([3, 2]) + b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(32),
    "plain_proof_bad_mac": bytes([4, 255]) + b"CNOD\x01" + bytes(64),
}
for k, v in CHANNEL.items():
    write("fuzz_channel", k, v)
