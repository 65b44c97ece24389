"""Event hooks are masked with the run's masker (Kong's own secret fields and "name:value" lists included): the names the user gave (`--mask-body-key`, `--mask-query`, and
the config file's `[masks] headers`) are masked in event hooks as in every other record, before the event is spooled and
before it ships. A real `kong-ship receive` on loopback, shipping to a strict fake webhook and to stdout, is sent
events that hold unique marker secrets under user-named keys only; no byte that leaves it (the vendor's
payloads, stdout, stderr, the spool, the checkpoints, the dead letters) holds a marker."""

from __future__ import annotations

import os
import threading
import uuid

import httpx
import orjson

from conftest import FAST, every_byte_under, ship_env, wait_until
from fakes.webhook import FakeWebhook, kong_signature
from receiving import free_port, start_receive

SECRET = "hook-secret-5e0b"
ENV = ship_env(KONG_SHIP_RECEIVE_SECRET=SECRET)
MASK = "*****"




def marked_event(n: int, markers: list[str]) -> dict:
    """A CRUD event whose only secrets sit under names no default mask knows: the user named them."""

    def marker(what: str) -> str:
        value = f"mk{what}{uuid.uuid4().hex}"
        markers.append(value)
        return value

    return {
        "operation": "update", "schema": "services", "event": "services", "source": "crud", "n": n,
        "entity": {
            "id": f"00000000-0000-4000-8000-{n:012d}", "name": f"svc-{n}",
            "Tenant-PIN": marker("flagkey"),  # --mask-body-key tenant_pin (names compared normalised)
            "tags": [{"corp_code": marker("filekey")}],  # [masks] headers in the config file: one set of names
            "url": f"https://upstream.example.com/cb?sig_v={marker('query')}&ok=1",  # --mask-query sig_v
            # Kong's own secret fields and conventions, which no user names: a certificate's second private key,
            # a Vault AppRole's secret id, a transformer plugin's "name:value" header, a dotted name.
            "key_alt": marker("keyalt"), "config": {"approle_secret_id": marker("approle"),
                                                    "add": {"headers": [f"X-Api-Key:{marker('pair')}", "x-ok:1"]},
                                                    "redis.password": marker("dotted")},
        },
    }  # fmt: skip


def post(port: int, events: list[dict]) -> httpx.Response:
    body = orjson.dumps(events)
    return httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Kong-Signature": kong_signature(SECRET.encode(), body)})


def test_a_user_named_secret_in_an_event_hook_leaves_in_no_byte(shippers, tmp_path):
    markers: list[str] = []
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "kong-ship.toml"
    config.write_text('[masks]\nheaders = ["Corp-Code"]\n')  # the flags below replace [masks] body_keys
    os.chmod(config, 0o600)
    with FakeWebhook() as fake:
        # The first request is refused for good: its event is dead-lettered, and the dead letters are scanned too.
        fake.script([400])
        proc = start_receive(shippers, [
            "--listen", f"127.0.0.1:{port}", "--sink", "webhook", "--sink", "stdout", "--endpoint",
            f"webhook={fake.url}", "--state-dir", str(state), "--config", str(config),
            "--mask-body-key", "tenant_pin", "--mask-query", "SIG_V", *FAST,
        ], ENV, port)
        assert post(port, [marked_event(1, markers)]).status_code == 200
        dead_letters = state / "receive" / "dead-letter.jsonl"
        wait_until(lambda: dead_letters.exists() and dead_letters.read_bytes().count(b"\n") >= 1, timeout=10)
        assert post(port, [marked_event(2, markers), marked_event(3, markers)]).status_code == 200
        fake.wait_for(lambda: sorted(e["details"]["n"] for e in fake.snapshot()) == [2, 3], timeout=10)
        lines: list[bytes] = []  # the stdout sink's lane goes at its own pace: the stop waits for its three events
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.proc.stdout.readline, b"")), daemon=True)
        reader.start()
        assert wait_until(lambda: len(lines) == 3, timeout=10)
        spooled = every_byte_under(str(state))  # before the stop: nothing pruned yet is missed
        code, rest, err = proc.stop()
        reader.join(timeout=10)
        assert code == 0, err
        out = b"".join(lines).decode() + rest
    shipped = b"".join(request.body for request in fake.requests)
    everything = {**spooled, **every_byte_under(str(state)), "stdout": out.encode(), "stderr": err.encode(),
                  "vendor": shipped}
    leaks = [(where, m) for where, data in everything.items() for m in markers if m.encode() in data]
    assert not leaks, leaks

    # Not vacuous: each event was spooled, shipped (or dead-lettered) and printed, masked where the markers were.
    spool_lines = [orjson.loads(line) for path, data in everything.items() if "spool-" in path
                   for line in data.splitlines()]
    assert sorted(e["record"]["n"] for e in spool_lines) == [1, 2, 3]
    for entity in [e["record"]["entity"] for e in spool_lines] + [e["details"]["entity"] for e in fake.snapshot()]:
        assert entity["Tenant-PIN"] == MASK and entity["tags"] == [{"corp_code": MASK}]
        assert entity["url"] == "https://upstream.example.com/cb?sig_v=*****&ok=1"
        assert entity["key_alt"] == MASK and entity["config"]["approle_secret_id"] == MASK
        assert entity["config"]["add"]["headers"] == ["X-Api-Key:*****", "x-ok:1"]
        assert entity["config"]["redis.password"] == MASK
    printed = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(p["properties"]["n"] for p in printed) == [1, 2, 3]
    assert all(p["properties"]["entity"]["Tenant-PIN"] == MASK for p in printed)
    (dead,) = [orjson.loads(line) for line in everything[str(state / "receive" / "dead-letter.jsonl")].splitlines()]
    assert dead["reason"] == "rejected" and b"svc-1" in orjson.dumps(dead)


def test_the_spool_encoder_masks_with_the_masker_it_is_given():
    from shipper.formats.event_hook import spool_encoder
    from shipper.processors.masking import Masker

    event = {"entity": {"Tenant-PIN": "s3cr3t", "key": "k", "name": "svc"}}
    assert orjson.loads(spool_encoder(Masker(["tenant_pin"]))(event)) == {
        "entity": {"Tenant-PIN": MASK, "key": MASK, "name": "svc"}}
    assert orjson.loads(spool_encoder(Masker())(event))["entity"]["Tenant-PIN"] == "s3cr3t"  # the names decide
    assert event["entity"]["Tenant-PIN"] == "s3cr3t"  # the delivery's own copy is not changed
