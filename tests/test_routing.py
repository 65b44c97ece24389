"""Routing by tenant (issue 17): `[[route]]` tables send each workspace's records to its own destination, each a
lane of its own (queue, retries, checkpoints); a destination that is down holds back only itself, and a record
no route matches goes to the default lane or is counted `unrouted`, never silently dropped."""

from __future__ import annotations

import collections
import hashlib
import os

import gen
import orjson
import pytest
from conftest import FAST, FAST_FOLLOW, ship, ship_env, summary_rows, wait_until
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from test_service_metrics import free_port, scrape

TEAMS = {"team-a": range(0, 300, 3), "team-b": range(1, 300, 3), "team-c": range(2, 300, 3)}  # team-c: no route


def write_teams(log, seqs) -> None:
    """Records of `seqs` in the order given, each in its team's workspace (seq % 3: a, b, c)."""
    for seq in seqs:
        team = "team-" + "abc"[seq % 3]
        gen.write_records(log, [seq], extra={"workspace_name": team, "workspace": f"ws-{team}"})


def config(tmp_path, a_url: str, b_url: str, *, default: bool = False, extra: str = "") -> str:
    (tmp_path / "a.key").write_text("key-a\n")
    (tmp_path / "b.key").write_text("key-b\n")
    path = tmp_path / "kong-ship.toml"
    path.write_text(
        ("[routing]\ndefault = \"segment\"\n" if default else "")
        + f"""
[[route]]
name = "team-a"
sink = "segment"
match = {{ workspace_name = ["team-a"] }}
write_key_file = "{tmp_path / 'a.key'}"
endpoint = "{a_url}"

[[route]]
name = "team-b"
sink = "segment"
match = {{ workspace = "ws-team-b" }}
write_key_file = "{tmp_path / 'b.key'}"
endpoint = "{b_url}"
""" + extra
    )
    return str(path)


def seqs_at(fake: FakeSegment) -> collections.Counter:
    return collections.Counter(gen.seq_of_segment_message(m) for m in fake.messages)


def checkpoint(state, lane: str) -> int:
    try:
        saved = orjson.loads((state / f"checkpoints-{lane}.json").read_bytes())
    except (OSError, ValueError):
        return -1
    return max((entry["offset"] for entry in saved["files"].values()), default=-1)


def test_one_tenant_down_does_not_hold_back_the_other_and_nothing_is_lost(tmp_path, shippers):
    log, state = tmp_path / "kong.json", tmp_path / "state"
    write_teams(log, range(150))
    with FakeSegment("key-a") as a, FakeSegment("key-b") as b:
        b.set_down(True)
        path = config(tmp_path, a.url, b.url)
        port = free_port()
        args = ("tail", str(log), "--config", path, "--state-dir", str(state), *FAST_FOLLOW)
        proc = shippers(*args, "--metrics-addr", f"127.0.0.1:{port}", env=ship_env())
        a.wait_for(lambda: len(a.messages) >= 50, timeout=30)
        write_teams(log, range(150, 300))
        a.wait_for(lambda: len(a.messages) >= 100, timeout=30)
        b.wait_for(lambda: b.request_count >= 2, timeout=30)
        # team-a has everything while team-b's source answers 503 and is retried
        assert seqs_at(a) == collections.Counter(TEAMS["team-a"])
        assert b.messages == []
        size = log.stat().st_size
        # team-a's checkpoint reaches the end; team-b's stops before its first record (seq 1): the line before it,
        # team-a's seq 0, was set aside and so acknowledged at once
        first_line = log.read_bytes().index(b"\n") + 1
        assert wait_until(lambda: checkpoint(state, "segment@team-a") == size, timeout=30)
        assert wait_until(lambda: checkpoint(state, "segment@team-b") == first_line, timeout=30)
        metrics = scrape(port)  # per destination, under the lane's name
        assert metrics['kong_ship_records_unrouted_total{sink="segment@team-a"}'] == 100
        assert metrics['kong_ship_records_routed_elsewhere_total{sink="segment@team-b"}'] == 100
        assert metrics['kong_ship_events_acknowledged_total{sink="segment@team-a"}'] == 100
        assert metrics['kong_ship_events_acknowledged_total{sink="segment@team-b"}'] == 0
        proc.kill9()  # while team-b is still down

        write_teams(log, range(300, 330))
        proc = shippers(*args, env=ship_env())
        a.wait_for(lambda: len(a.messages) >= 110, timeout=30)
        assert b.messages == []
        b.set_down(False)  # team-b comes back: its lane starts from its own checkpoint and delivers everything
        b.wait_for(lambda: len(b.messages) >= 110, timeout=30)
        code, _, err = proc.stop()
        assert code == 0, err
    # every record of each team exactly once, at its own source only (a fake refuses another's write key): team-a's
    # lane resumed at its checkpoint (nothing sent twice), team-b's at its own (nothing lost)
    assert seqs_at(a) == collections.Counter(range(0, 330, 3))
    assert seqs_at(b) == collections.Counter(range(1, 330, 3))
    assert not (state / "checkpoints-segment.json").exists()  # no plain segment lane: routes only
    # after the restart: team-a's lane read the 30 new lines, team-b's all but the first; team-c's matched no
    # route and there is no default lane: counted as unrouted
    rows = summary_rows(err)
    assert rows["segment@team-a"] == {**rows["segment@team-a"], "read": 30, "shipped": 10, "routed-elsewhere": 10,
                                      "unrouted": 10}
    assert rows["segment@team-b"] == {**rows["segment@team-b"], "read": 329, "shipped": 110,
                                      "routed-elsewhere": 109, "unrouted": 110}


@pytest.mark.parametrize("workers", ["0", "2"])  # the decision is made in the worker processes too
def test_records_no_route_matches_go_to_the_default_and_every_lane_accounts_for_every_line(tmp_path, workers):
    log, state = tmp_path / "kong.json", tmp_path / "state"
    write_teams(log, range(300))
    (tmp_path / "default.key").write_text("key-default\n")
    with FakeSegment("key-a") as a, FakeSegment("key-b") as b, FakeSegment("key-default") as default:
        path = config(tmp_path, a.url, b.url, default=True,
                      extra=f'\n[sinks.segment]\nendpoint = "{default.url}"\nwrite_key_file = "{tmp_path / "default.key"}"\n')
        done = ship("backfill", str(log), "--config", path, "--state-dir", str(state), "--workers", workers, *FAST,
                    env=ship_env(SEGMENT_WRITE_KEY="never-used"))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert seqs_at(a) == collections.Counter(TEAMS["team-a"])
    assert seqs_at(b) == collections.Counter(TEAMS["team-b"])
    assert seqs_at(default) == collections.Counter(TEAMS["team-c"])
    rows = summary_rows(err)
    assert set(rows) == {"segment", "segment@team-a", "segment@team-b"}
    for lane, row in rows.items():
        assert row["read"] == 300 and row["shipped"] == 100 and row["routed-elsewhere"] == 200, (lane, row)
        assert "unrouted" not in row  # the column is shown only when some lane counted one
        assert row["filtered"] == 0
    assert "filtered:" not in err  # routing is not counted as a filter's drop
    for lane in ("segment", "segment@team-a", "segment@team-b"):
        assert (state / f"checkpoints-{lane}.json").stat().st_mode & 0o777 == 0o600
    status = ship("status", "--state-dir", str(state), "--json")
    assert status.returncode == 0, status.stderr.decode()
    rows = orjson.loads(status.stdout)["files"]
    assert {row["sink"] for row in rows} == {"segment", "segment@team-a", "segment@team-b"}
    assert all(row["done"] for row in rows)


def test_a_route_never_borrows_the_default_credential_and_takes_its_own_from_the_environment(tmp_path):
    log = tmp_path / "kong.json"
    write_teams(log, range(30))
    with FakeSegment("key-a") as a, FakeSegment("key-b-from-env") as b:
        path = config(tmp_path, a.url, b.url)
        text = open(path).read().replace(f'write_key_file = "{tmp_path / "b.key"}"\n', "")
        open(path, "w").write(text)
        missing = ship("backfill", str(log), "--config", path, "--state-dir", str(tmp_path / "s1"),
                       env=ship_env(SEGMENT_WRITE_KEY="the-default-key"))
        assert missing.returncode == 2
        lines = missing.stderr.decode().splitlines()
        assert len(lines) == 1 and "route team-b" in lines[0] and "SEGMENT_WRITE_KEY_TEAM_B" in lines[0], lines
        assert "the-default-key" not in missing.stderr.decode()
        done = ship("backfill", str(log), "--config", path, "--state-dir", str(tmp_path / "s2"), *FAST,
                    env=ship_env(SEGMENT_WRITE_KEY_TEAM_B="key-b-from-env"))
        assert done.returncode == 0, done.stderr.decode()
    assert seqs_at(b) == collections.Counter(TEAMS["team-b"][:10])


BAD_CONFIGS = {
    "duplicate": ('[[route]]\nname = "x"\nsink = "segment"\nmatch = { workspace = "a" }\nwrite_key_file = "k"\n'
                  '[[route]]\nname = "x"\nsink = "moesif"\nmatch = { workspace = "b" }\napplication_id_file = "k"\n',
                  "route x: a second [[route]] of that name"),
    "unknown sink": ('[[route]]\nname = "x"\nsink = "kafka"\nmatch = { workspace = "a" }\n',
                     "route x: sink: unknown sink 'kafka'"),
    "unsafe name": ('[[route]]\nname = "../x"\nsink = "segment"\nmatch = { workspace = "a" }\n', "route #1: name"),
    "no match": ('[[route]]\nname = "x"\nsink = "segment"\nwrite_key_file = "k"\n', "route x: match: expected a table"),
    "unknown key": ('[[route]]\nname = "x"\nsink = "segment"\nmatch = { workspace = "a" }\nwrite_kee_file = "k"\n',
                    "route x: write_kee_file: unknown key for a segment route"),
    "unknown match key": ('[[route]]\nname = "x"\nsink = "segment"\nmatch = { tenant = "a" }\n',
                          "route x: match.tenant: unknown key"),
    "userinfo": ('[[route]]\nname = "x"\nsink = "segment"\nmatch = { workspace = "a" }\nwrite_key_file = "k"\n'
                 'endpoint = "https://u:secret-pw@a.example/"\n', "route x: endpoint https://"),
    "unreadable credential": ('[[route]]\nname = "x"\nsink = "segment"\nmatch = { workspace = "a" }\n'
                              'write_key_file = "/nonexistent/key"\n', "route x: cannot read"),
}


def test_configuration_errors_exit_2_with_one_line_naming_the_route(tmp_path):
    log = tmp_path / "kong.json"
    write_teams(log, range(3))
    for case, (text, expected) in BAD_CONFIGS.items():
        path = tmp_path / f"{case.replace(' ', '-')}.toml"
        path.write_text(text)
        for command in ("check-config", "tail"):
            done = ship(command, str(log), "--config", str(path), "--state-dir", str(tmp_path / "state"),
                        env=ship_env(SEGMENT_WRITE_KEY="k"))
            lines = done.stderr.decode().splitlines()
            assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (case, command, lines)
    assert not os.path.exists(tmp_path / "state" / "checkpoints-segment@x.json")


def test_check_config_shows_the_routes_and_their_lanes_secrets_redacted(tmp_path):
    log = tmp_path / "kong.json"
    write_teams(log, range(3))
    path = config(tmp_path, "https://a.example/", "https://b.example/?token=s3cr3t", default=True)
    done = ship("check-config", str(log), "--config", path, "--state-dir", str(tmp_path / "state"),
                env=ship_env(SEGMENT_WRITE_KEY="default-secret"))
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert '[[route]]\nname = "team-a"\nsink = "segment"\nmatch = { workspace_name = ["team-a"] }' in out
    assert f'write_key_file = "{tmp_path / "a.key"}"' in out
    assert "key-a" not in out + err and "default-secret" not in out + err and "s3cr3t" not in out
    assert ("lanes: segment (records no route matched); segment@team-a (workspace_name in ['team-a']); "
            "segment@team-b (workspace in ['ws-team-b'])") in err


def test_a_destination_dead_letters_under_its_lane_name(tmp_path):
    log, dead = tmp_path / "kong.json", tmp_path / "dead.jsonl"
    write_teams(log, range(30))
    refused = hashlib.md5(b"request-id:3").hexdigest()  # gen's request id of seq 3 (team-a): the messageId
    with FakeSegment("key-a", reject_message_ids={refused}) as a, FakeSegment("key-b") as b:
        path = config(tmp_path, a.url, b.url)
        done = ship("backfill", str(log), "--config", path, "--state-dir", str(tmp_path / "state"),
                    "--dead-letter", str(dead), *FAST, env=ship_env())
    assert done.returncode == 1, done.stderr.decode()  # the vendor refused an event for good
    assert seqs_at(a) == collections.Counter(set(TEAMS["team-a"][:10]) - {3})
    assert seqs_at(b) == collections.Counter(TEAMS["team-b"][:10])
    entries = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [(e["reason"], e["sink"]) for e in entries] == [("rejected", "segment@team-a")]
    assert summary_rows(done.stderr)["segment@team-a"]["rejected"] == 1


def test_a_webhook_route_by_service_signed_with_its_own_secret_beside_a_segment_route(tmp_path):
    log = tmp_path / "kong.json"
    write_teams(log, range(30))
    gen.write_records(log, range(30, 40), extra={"service": {"id": "svc-pay", "name": "payments-api"}})
    (tmp_path / "pay.secret").write_text("pay-secret\n")
    with FakeSegment("key-a") as a, FakeWebhook(secret=b"pay-secret", require_headers={"X-Team": "payments"}) as hook:
        path = tmp_path / "kong-ship.toml"
        path.write_text(f"""
[[route]]
name = "team-a"
sink = "segment"
match = {{ workspace_name = "team-a" }}
write_key_file = "{tmp_path / 'a.key'}"
endpoint = "{a.url}"

[[route]]
name = "payments"
sink = "webhook"
match = {{ service = ["svc-pay"] }}
url = "{hook.url}/kong"
header = ["X-Team: payments"]
secret_file = "{tmp_path / 'pay.secret'}"
""")
        (tmp_path / "a.key").write_text("key-a\n")
        done = ship("backfill", str(log), "--config", str(path), "--state-dir", str(tmp_path / "state"), *FAST,
                    env=ship_env(KONG_SHIP_WEBHOOK_SECRET="the-default-secret"))
    assert done.returncode == 0, done.stderr.decode()
    assert seqs_at(a) == collections.Counter(TEAMS["team-a"][:10])
    assert sorted(gen.seq_of_url(e["raw_path"]) for e in hook.events) == list(range(30, 40))
    rows = summary_rows(done.stderr)
    assert rows["webhook@payments"]["unrouted"] == 20  # teams b and c: no route, no default
    assert rows["segment@team-a"]["unrouted"] == 20 and rows["segment@team-a"]["routed-elsewhere"] == 10


def test_a_webhook_routes_fatal_line_names_the_secret_it_was_signed_with(monkeypatch):
    """A webhook route is signed with KONG_SHIP_WEBHOOK_SECRET_<ROUTE> when the default's variable is set too
    (build_route_sink); its fatal line said "unsigned: no secret_file" even then, pointing away from the cause."""
    from shipper.routing import credential, parse_route

    route = parse_route("c.toml", 0, {"name": "payments", "sink": "webhook", "match": {"service": "payments"}})
    monkeypatch.delenv("KONG_SHIP_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("KONG_SHIP_WEBHOOK_SECRET_PAYMENTS", raising=False)
    assert "unsigned" in credential(route)
    monkeypatch.setenv("KONG_SHIP_WEBHOOK_SECRET", "the-default's")
    monkeypatch.setenv("KONG_SHIP_WEBHOOK_SECRET_PAYMENTS", "its own")
    assert credential(route) == "KONG_SHIP_WEBHOOK_SECRET_PAYMENTS"
