"""Issue 11, "No secret leaves", end to end: a log with marker secrets in every shape (and malformed lines carrying
secrets) is shipped by the real `kong-ship backfill --log-level debug` to every sink at once — fake Segment,
Moesif, Runscope (with body logging), webhook, and stdout — and every byte that left is scanned: the requests the
fakes received (decompressed, base64 bodies decoded), stdout, stderr, every file of the state directory (dead
letters included). Then the other doors: check-config, an endpoint with userinfo, receive's debug log."""

from __future__ import annotations

import gzip
import os
import socket
import time

import httpx
import orjson

import gen
import leaks
from conftest import FAST, ship, ship_env, wait_until
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from test_masking import readable

ENV = ship_env(SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app",
               RUNSCOPE_ACCESS_TOKEN="runscope-token", RUNSCOPE_BUCKET_KEY="bucket1")  # fmt: skip


def write_log(path) -> tuple[list[str], int]:
    """Every shape, several variations each, Kong and Nginx lines, and malformed lines with secrets."""
    markers: list[str] = []
    lines: list[bytes] = []
    n = 0
    for seed, shape in enumerate(sorted(leaks.SHAPES) * 4):
        record = gen.kong_record(seed, version=["3", "2", "0"][seed % 3])
        m = leaks.marker(n := n + 1)
        leaks.SHAPES[shape](record, m, leaks.fixed_pick(seed))
        markers.append(m)
        lines.append(gen.kong_line(record))
    for seed in range(10):
        trio = [leaks.marker(n := n + 1) for _ in range(3)]
        markers += trio
        lines.append(gen.nginx_line(leaks.nginx_record(seed, trio, leaks.fixed_pick(seed))))
    shipped = len(lines)
    bad = [leaks.marker(n := n + 1) for _ in range(8)]
    markers += bad
    whole = gen.kong_record(999)
    whole["request"]["headers"]["Authorization"] = f"Bearer {bad[0]}"
    whole["request"]["headers"]["Cookie"] = f"session={bad[1]}"
    whole["request"]["uri"] += f"&tok%65n={bad[2]}#access_token={bad[3]}"
    whole["request"]["body"] = {"login": {"Password": bad[4]}}
    lines.append(gen.kong_line(whole)[:-40] + b"\n")  # cut short: not JSON any more
    lines.append(f"GET /x?api%255Fkey={bad[5]} HTTP/1.1 Authorization: Basic {bad[6]}xyz==\n".encode())
    lines.append(b'["not an object", {"X-API-KEY": "' + bad[7].encode() + b'"}]\n')
    path.write_bytes(b"".join(lines))
    return markers, shipped


def scan(markers: list[str], where: str, data: bytes) -> list[str]:
    text = readable(data)
    return [f"{m} in {where}" for m in markers if m in text]


def test_no_marker_leaves_through_any_sink_stdout_stderr_or_the_state_directory(tmp_path):
    log = tmp_path / "kong.json"
    markers, shipped = write_log(log)
    state = tmp_path / "state"
    with FakeSegment() as segment, FakeMoesif() as moesif, FakeRunscope() as runscope, FakeWebhook() as webhook:
        result = ship(
            "backfill", str(log), "--state-dir", str(state), "--log-level", "debug", *FAST,
            "--sink", "segment", "--sink", "moesif", "--sink", "runscope", "--sink", "webhook", "--sink", "stdout",
            "--endpoint", f"segment={segment.url}", "--endpoint", f"moesif={moesif.url}",
            "--endpoint", f"runscope={runscope.url}", "--endpoint", f"webhook={webhook.url}/hook",
            "--runscope-log-body", env=ENV, timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        fakes = {"segment": segment, "moesif": moesif, "runscope": runscope, "webhook": webhook}
        # Not vacuous: every understood line reached every vendor, and the bodies were sent.
        assert len(segment.messages) == shipped and len(moesif.events) == shipped
        assert len(runscope.messages) == shipped and len(webhook.events) == shipped
        assert any("body" in m["request"] for m in runscope.messages)
        found = []
        for name, fake in fakes.items():
            for request in fake.requests:
                body = request.body
                if request.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                found += scan(markers, f"{name} {request.path}", request.path.encode() + b"\n" + body)
        found += scan(markers, "stdout", result.stdout) + scan(markers, "stderr", result.stderr)
        files = [os.path.join(d, f) for d, _, names in os.walk(state) for f in names]
        assert any(f.endswith("dead-letter.jsonl") for f in files)
        for path in files:
            with open(path, "rb") as handle:
                found += scan(markers, path, handle.read())
        assert not found, found
        assert result.stdout.count(b"\n") == shipped
        dead = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
        assert len(dead) == 3 and all(entry["line"] for entry in dead)  # kept, as far as they can be masked


def test_check_config_and_errors_print_no_secret(tmp_path):
    secret = leaks.marker(424242)
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    common = [str(log), "--state-dir", str(tmp_path / "state"), "--sink", "webhook"]
    shown = ship("check-config", *common, "--endpoint", "http://127.0.0.1:9/hook?x=1",
                 "--webhook-header", f"Authorization: Bearer {secret}", env=ENV)
    assert shown.returncode == 0, shown.stderr
    assert secret.encode() not in shown.stdout + shown.stderr and b"Authorization: (redacted)" in shown.stdout
    for command in ("check-config", "backfill"):
        refused = ship(command, *common, "--endpoint", f"http://user:{secret}@127.0.0.1:9/hook", env=ENV)
        stderr = refused.stderr.decode()
        assert refused.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert secret not in stderr and "user:password@" in stderr
    segment = ship("backfill", str(log), "--state-dir", str(tmp_path / "s2"), "--sink", "segment",
                   "--endpoint", f"https://wk:{secret}@127.0.0.1:9", env=ENV)
    assert segment.returncode == 2 and secret.encode() not in segment.stderr  # not sent as the Basic header


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receive_debug_log_masks_request_targets(shippers, tmp_path):
    secret = leaks.marker(777)
    port = free_port()
    with FakeWebhook() as fake:
        proc = shippers("receive", "--listen", f"127.0.0.1:{port}", "--sink", "webhook", "--endpoint", fake.url,
                        "--state-dir", str(tmp_path / "state"), "--allow-unsigned", "--log-level", "debug", *FAST)
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return proc.proc.poll() is not None
        assert wait_until(up, timeout=20) and proc.proc.poll() is None
        event = {"source": "crud", "event": "consumers", "operation": "create", "entity": {"id": "c1"}}
        answer = httpx.post(f"http://127.0.0.1:{port}/hook?token={secret}&a=1", json=event, timeout=10)
        assert answer.status_code == 200
        fake.wait_for(lambda: fake.events, timeout=10)
        time.sleep(0.2)
        code, out, err = proc.stop()
        assert code == 0, err
        assert "receive:" in err and "token=*****" in err  # the target is logged, masked
        assert secret not in out + err
