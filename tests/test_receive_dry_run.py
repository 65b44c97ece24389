"""`kong-ship receive --dry-run`: a real receiver on loopback answers Kong's event hooks and http-log as usual,
prints the requests its sinks would make (masked, credentials redacted) and sends nothing: its endpoint is a
listening socket that must never see a connection, and its --state-dir is never touched (the spool, the
checkpoints and the dead letters live in a throwaway directory under TMPDIR, gone at exit)."""

from __future__ import annotations

import threading
import uuid

import httpx
import orjson

import gen
from conftest import FAST, ship_env, wait_until
from fakes.webhook import kong_signature
from receiving import free_port, start_receive

HOOK_SECRET = "hook-secret-DRY-1"
HTTP_LOG_TOKEN = "http-log-token-DRY-2"
WEBHOOK_SECRET = "webhook-signing-secret-DRY-3"
ENV = ship_env(KONG_SHIP_RECEIVE_SECRET=HOOK_SECRET, KONG_SHIP_HTTP_LOG_TOKEN=HTTP_LOG_TOKEN,
               KONG_SHIP_WEBHOOK_SECRET=WEBHOOK_SECRET)
MASK = "*****"




def test_receive_dry_run_prints_masked_requests_sends_nothing_and_keeps_no_state(shippers, tmp_path, nobody):
    port = free_port()
    state, scratch = tmp_path / "state", tmp_path / "tmp"
    scratch.mkdir()
    marker = f"mkpin{uuid.uuid4().hex}"
    proc = start_receive(shippers, [
        "--listen", f"127.0.0.1:{port}", "--sink", "webhook", "--endpoint", nobody, "--state-dir", str(state),
        "--mask-body-key", "tenant_pin", "--dry-run", *FAST,
    ], {**ENV, "TMPDIR": str(scratch)}, port)
    events = [{"source": "crud", "event": "consumers", "operation": "create", "n": n,
               "entity": {"id": f"c{n}", "tenant_pin": marker}} for n in (1, 2)]
    body = orjson.dumps(events)
    answer = httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Kong-Signature": kong_signature(HOOK_SECRET.encode(), body)})
    assert answer.status_code == 200 and answer.json() == {"accepted": 2}  # answered as a real run answers
    record = gen.kong_record(7)
    answer = httpx.post(f"http://127.0.0.1:{port}/http-log", content=orjson.dumps(record), timeout=10,
                        headers={"Authorization": f"Bearer {HTTP_LOG_TOKEN}", "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    # The spool, checkpoints and dead letters are in the throwaway directory, not under --state-dir.
    assert wait_until(lambda: list(scratch.glob("kong-ship-dry-run-*/receive/spool-*.jsonl")), timeout=10)
    lines: list[bytes] = []  # stdout as it is printed: the stop waits for all three records
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.proc.stdout.readline, b"")), daemon=True)
    reader.start()
    assert wait_until(lambda: sum(len(orjson.loads(line)["body"]) for line in list(lines)) == 3, timeout=10)
    code, rest, err = proc.stop()
    reader.join(timeout=10)
    assert code == 0, err
    out = b"".join(lines).decode() + rest

    printed = [orjson.loads(line) for line in out.splitlines()]
    assert printed and all(p["sink"] == "webhook" and p["method"] == "POST" for p in printed)
    shipped = [event for p in printed for event in p["body"]]
    hooks = sorted((e for e in shipped if e["kind"] == "event_hook"), key=lambda e: e["details"]["n"])
    assert [e["details"]["n"] for e in hooks] == [1, 2]
    assert all(e["details"]["entity"]["tenant_pin"] == MASK for e in hooks)  # masked as a real run ships it
    assert len(shipped) == 3  # and the http-log record
    assert all(p["headers"]["x-kong-signature"] == "[redacted]" for p in printed)
    for secret in (marker, WEBHOOK_SECRET, HOOK_SECRET, HTTP_LOG_TOKEN):
        assert secret not in out and secret not in err
    assert "dry run: " in err and "none sent" in err and "shipped nowhere" in err
    assert not state.exists()  # --state-dir neither read nor written
    assert not any(scratch.iterdir())  # the throwaway directory is gone at exit
