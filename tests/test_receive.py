"""`kong-ship receive`, as a real process: Kong event-hook deliveries with good, bad and missing signatures,
bodies over the limit, overload while the vendor is down, and every accepted event delivered — across a
`kill -9` too (accepted means durable)."""

from __future__ import annotations

import collections
import socket
import time

import gen

import httpx
import orjson
import pytest

from conftest import FAST, ship, ship_env, wait_until
from fakes.webhook import FakeWebhook, kong_signature
from shipper.formats import Parser
from shipper.sinks.stdout import StdoutSink

SECRET = "hook-secret-9f2c"
ENV = ship_env(KONG_SHIP_RECEIVE_SECRET=SECRET)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kong_event(n: int, **extra) -> dict:
    """What Kong's webhook handler POSTs for a CRUD event: the data, plus `event` and `source`."""
    return {
        "operation": "create", "schema": "consumers", "event": "consumers", "source": "crud",
        "entity": {"id": f"00000000-0000-4000-8000-{n:012d}", "username": f"user-{n}", "created_at": 1700000000 + n},
        "n": n, **extra,
    }  # fmt: skip


class Receive:
    """A running `kong-ship receive` and a client for it."""

    def __init__(self, shippers, tmp_path, fake, *more, env=ENV, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/kong/hooks"
        self.proc = shippers(
            "receive", "--listen", f"127.0.0.1:{self.port}", "--sink", "webhook", "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), *FAST, *more, env=env,
        )
        self.client = httpx.Client(timeout=10)
        assert wait_until(self._listening, timeout=20) and self.proc.proc.poll() is None, self._died()

    def _listening(self) -> bool:
        if self.proc.proc.poll() is not None:
            return True  # reported by _died
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def _died(self) -> str:
        return "" if self.proc.proc.poll() is None else self.proc.wait()[2]

    def post(self, event, *, secret: str | None = SECRET, signature: str | None = None, body: bytes | None = None):
        body = orjson.dumps(event) if body is None else body
        headers = {"Content-Type": "application/json", "User-Agent": "lua-resty-http/0.17.1 (Lua) ngx_lua/10026"}
        if signature is not None:
            headers["X-Kong-Signature"] = signature
        elif secret is not None:
            headers["X-Kong-Signature"] = kong_signature(secret.encode(), body)
        return self.client.post(self.url, content=body, headers=headers)


def delivered(fake) -> collections.Counter:
    return collections.Counter(e["details"]["n"] for e in fake.snapshot())


def ids_by_n(fake) -> dict[int, set[str]]:
    out: dict[int, set[str]] = collections.defaultdict(set)
    for e in fake.snapshot():
        out[e["details"]["n"]].add(e["event_id"])
    return out


def test_signatures_good_bad_missing(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        good = rx.post(kong_event(1))
        assert good.status_code == 200 and good.json() == {"accepted": 1}
        bare_hex = orjson.dumps(kong_event(2))
        assert rx.post(None, body=bare_hex, signature=kong_signature(SECRET.encode(), bare_hex)[5:]).status_code == 200
        assert rx.post(kong_event(3), secret="not-the-secret").status_code == 401
        assert rx.post(kong_event(4), secret=None).status_code == 401
        tampered = orjson.dumps(kong_event(5))
        assert rx.post(None, body=tampered + b" ", signature=kong_signature(SECRET.encode(), tampered)).status_code == 401
        assert rx.post(None, body=b"not json").status_code == 400
        assert rx.post([1, 2]).status_code == 400
        assert rx.client.get(rx.url).status_code == 405
        fake.wait_for(lambda: sorted(delivered(fake)) == [1, 2], timeout=10)
        event = fake.snapshot()[0]
        assert event["kind"] == "event_hook" and event["details"]["source"] == "crud"
        assert event["details"]["entity"]["username"] == "user-1"
        code, _, err = rx.proc.stop()
        assert code == 0, err
        assert "received 2 events" in err and SECRET not in err
        time.sleep(0.2)
        assert sorted(delivered(fake)) == [1, 2]  # nothing refused was shipped


def test_a_batch_from_kong_ship_webhook_is_accepted_and_secrets_are_masked(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        ping = {"source": "kong:event_hooks", "event": "ping", "operation": "create", "n": 9,
                "event_hooks": {"handler": "webhook", "config": {"url": "http://x", "secret": "hook-config-secret",
                                                                  "headers": {"Authorization": "Bearer abc"}}}}
        response = rx.post([kong_event(7), kong_event(8), ping])
        assert response.status_code == 200 and response.json() == {"accepted": 3}
        fake.wait_for(lambda: sorted(delivered(fake)) == [7, 8, 9], timeout=10)
        (shipped,) = [e for e in fake.snapshot() if e["details"]["n"] == 9]
        config = shipped["details"]["event_hooks"]["config"]
        assert config["secret"] == "*****" and config["headers"]["Authorization"] == "*****"
        assert b"hook-config-secret" not in b"".join(r.body for r in fake.requests)


def test_body_over_the_limit_is_413(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake, "--max-body-bytes", "2048")
        big = kong_event(1, padding="x" * 10_000)
        assert rx.post(big).status_code == 413
        assert rx.post(kong_event(2)).status_code == 200  # a new connection, all well
        fake.wait_for(lambda: sorted(delivered(fake)) == [2], timeout=10)


def test_unsigned_needs_allow_unsigned(shippers, tmp_path):
    with FakeWebhook() as fake:
        result = ship("receive", "--listen", f"127.0.0.1:{free_port()}", "--sink", "webhook", "--endpoint", fake.url,
                      "--state-dir", str(tmp_path / "state"), env=ship_env())
        stderr = result.stderr.decode()
        assert result.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert "--allow-unsigned" in stderr and "KONG_SHIP_RECEIVE_SECRET" in stderr
        rx = Receive(shippers, tmp_path, fake, "--allow-unsigned", env=ship_env())
        assert rx.post(kong_event(1), secret=None).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1], timeout=10)


def test_port_in_use_and_second_receiver_exit_2(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        taken = ship("receive", "--listen", f"127.0.0.1:{rx.port}", "--sink", "webhook", "--endpoint", fake.url,
                     "--state-dir", str(tmp_path / "other"), env=ENV)
        assert taken.returncode == 2 and "cannot listen" in taken.stderr.decode()
        same_spool = ship("receive", "--listen", f"127.0.0.1:{free_port()}", "--sink", "webhook", "--endpoint",
                          fake.url, "--state-dir", str(tmp_path / "state"), env=ENV)
        assert same_spool.returncode == 2 and "another kong-ship receive" in same_spool.stderr.decode()


@pytest.mark.parametrize("mode", ["503", "close", None])
def test_overload_is_refused_until_the_sink_catches_up(shippers, tmp_path, mode):
    with FakeWebhook() as fake:
        fake.set_down(True)  # the vendor answers 503: events pile up in the spool
        flag = ["--on-overload", mode] if mode else []
        mode = mode or "503"  # the default: the HTTP way to say "later"
        rx = Receive(shippers, tmp_path, fake, "--max-backlog-bytes", "3000", *flag)
        accepted, refused = [], 0
        for n in range(100):
            try:
                response = rx.post(kong_event(n))
            except httpx.TransportError:
                assert mode == "close"
                refused += 1
                break
            if response.status_code == 503:
                assert mode == "503" and response.headers["retry-after"]
                refused += 1
                break
            assert response.status_code == 200
            accepted.append(n)
        assert refused and 3 <= len(accepted) < 40, accepted
        assert not fake.events
        fake.set_down(False)  # the vendor is back: the backlog drains, deliveries are accepted again

        def accepts_again():
            try:
                return rx.post(kong_event(1000)).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(accepts_again, timeout=15)
        accepted.append(1000)
        fake.wait_for(lambda: set(delivered(fake)) >= set(accepted), timeout=15)
        got = delivered(fake)
        assert set(got) == set(accepted) and max(got.values()) == 1


def test_every_accepted_event_arrives_across_kill_9(shippers, tmp_path):
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        for n in range(20):
            assert rx.post(kong_event(n)).status_code == 200
        fake.wait_for(lambda: len(delivered(fake)) == 20, timeout=10)
        fake.set_down(True)  # accepted from now on, but not delivered before the crash
        for n in range(20, 45):
            assert rx.post(kong_event(n)).status_code == 200
        rx.proc.kill9()
        fake.set_down(False)
        rx2 = Receive(shippers, tmp_path, fake, port=rx.port)
        for n in range(45, 60):
            assert rx2.post(kong_event(n)).status_code == 200
        fake.wait_for(lambda: set(delivered(fake)) == set(range(60)), timeout=20)
        # At least once; a resend after the crash carries the same event_id, which the vendor de-duplicates on.
        assert all(len(ids) == 1 for ids in ids_by_n(fake).values())
        assert len({next(iter(ids)) for ids in ids_by_n(fake).values()}) == 60
        code, _, err = rx2.proc.stop()
        assert code == 0, err


def test_kong_ship_webhook_to_kong_ship_receive(shippers, tmp_path):
    """The webhook sink's signature is the one the receiver checks: one kong-ship can feed another."""
    import gen

    log = tmp_path / "kong.json"
    gen.write_records(log, range(1, 41))
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        result = ship("backfill", str(log), "--sink", "webhook", "--endpoint", rx.url, "--batch-size", "7",
                      "--state-dir", str(tmp_path / "sender"), "--flush-interval", "0.05",
                      env=ship_env(KONG_SHIP_WEBHOOK_SECRET=SECRET))
        assert result.returncode == 0, result.stderr
        fake.wait_for(lambda: len(fake.snapshot()) >= 40, timeout=15)
        got = collections.Counter(gen.seq_of_url(e["details"]["raw_path"]) for e in fake.snapshot())
        assert set(got) == set(range(1, 41)) and max(got.values()) == 1


def test_stdout_sink_names_event_hooks():
    envelope = {"spool": "event_hook", "seq": 4, "received_at": "2025-03-01T10:00:00.000Z",
                "record": {"source": "balancer", "event": "health", "ip": "10.0.0.1", "port": 80, "health": "unhealthy"}}
    txn = Parser().parse(orjson.dumps(envelope))
    message = orjson.loads(StdoutSink(stream=None).encode(txn))
    assert message["type"] == "track" and message["properties"]["health"] == "unhealthy"
    assert message["timestamp"].startswith("2025-03-01T10:00:00") and message["messageId"] == txn.event_id
    again = Parser().parse(orjson.dumps(envelope))
    assert again.event_id == txn.event_id  # stable: a re-read after a crash is the same event
    other = Parser().parse(orjson.dumps({**envelope, "seq": 5}))
    assert other.event_id != txn.event_id  # an identical event received twice is two events


def test_receive_and_tail_share_a_state_dir_without_mixing_checkpoints(shippers, tmp_path):
    """Both ship to a sink named `webhook`; receive keeps its checkpoints in STATE_DIR/receive/, so neither
    skips nor resends the other's records, across a restart of both."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(30))
    with FakeWebhook() as hooks, FakeWebhook() as logs:
        def seqs() -> collections.Counter:
            return collections.Counter(gen.seq_of_url(e["raw_path"]) for e in logs.snapshot())

        def tail():
            return shippers("tail", str(log), "--sink", "webhook", "--endpoint", logs.url,
                            "--state-dir", str(tmp_path / "state"), *FAST, env=ENV)

        rx = Receive(shippers, tmp_path, hooks)
        follower = tail()
        for n in range(10):
            assert rx.post(kong_event(n)).status_code == 200
        hooks.wait_for(lambda: len(delivered(hooks)) == 10, timeout=10)
        logs.wait_for(lambda: len(seqs()) == 30, timeout=10)
        assert rx.proc.stop()[0] == 0 and follower.stop()[0] == 0

        gen.write_records(log, range(30, 40))
        rx = Receive(shippers, tmp_path, hooks)
        follower = tail()
        for n in range(10, 15):
            assert rx.post(kong_event(n)).status_code == 200
        hooks.wait_for(lambda: len(delivered(hooks)) == 15, timeout=10)
        logs.wait_for(lambda: len(seqs()) == 40, timeout=10)
        time.sleep(0.3)
        assert rx.proc.stop()[0] == 0 and follower.stop()[0] == 0
        assert delivered(hooks) == collections.Counter(range(15))
        assert seqs() == collections.Counter(range(40))


def test_the_spool_keeps_event_hooks_masked(shippers, tmp_path):
    """The spool is state on disk: a key-auth credential's key and a hook's secret are masked before they are
    written there, not only before they ship."""
    marker_key, marker_secret = "kA-SPOOL-KEY-7d1e", "hook-SPOOL-SECRET-c3b9"
    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        credential = kong_event(1, schema="keyauth_credentials", event="keyauth_credentials",
                                entity={"id": "c1", "key": marker_key, "consumer": {"id": "u1"}})
        hook = kong_event(2, event_hooks={"config": {"secret": marker_secret}})
        assert rx.post([credential, hook]).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1, 2], timeout=10)
        written = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
        assert b"spool" in b" ".join(str(p).encode() for p in (tmp_path / "state").rglob("*"))
        assert marker_key.encode() not in written and marker_secret.encode() not in written
        assert marker_key.encode() not in b"".join(r.body for r in fake.requests)
