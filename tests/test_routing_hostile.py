"""Several sinks and tenant routes at once under a hostile vendor, as real `kong-ship backfill` processes against
loopback fakes, every record with a seq of its own and the set that arrived at each fake checked: one sink's
vendor fatal mid-run (the other's records neither lost nor sent twice, each checkpoint only past what its own
vendor acknowledged, the line naming the lane that failed), one route's credential refused while another's is
fine, and a re-run once the vendor is fixed."""

from __future__ import annotations

import collections
import json

import httpx
import orjson
import pytest

import gen
from conftest import FAST, FAST_FOLLOW, ship, ship_env, wait_until
from fakes.moesif import FakeMoesif
from fakes.webhook import FakeWebhook
from receiving import free_port, start_receive

APP = "ZQ9200001MOESIFAPPQZ"


def moesif_seqs(fake) -> collections.Counter:
    return collections.Counter(int(e["request"]["headers"]["x-seq"]) for e in list(fake.events))


def hook_seqs(fake) -> collections.Counter:
    return collections.Counter(int(e["request_headers"]["x-seq"]) for e in fake.snapshot())


def line_ends(path) -> list[int]:
    ends, total = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        total += len(line)
        ends.append(total)
    return ends


def checkpointed(state, lane: str) -> int:
    try:
        files = json.loads((state / f"checkpoints-{lane}.json").read_text())["files"]
    except FileNotFoundError:
        return 0
    return sum(entry["offset"] for entry in files.values())


def below(path, seqs, offset: int) -> set[int]:
    return {seq for seq, end in zip(seqs, line_ends(path)) if end <= offset}


def fatal_lines(stderr: bytes) -> list[str]:
    text = stderr.decode()
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if "fatal" in line]


# -- two sinks, one fatal ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "2"])
def test_one_sink_fatal_mid_run_neither_loses_nor_doubles_the_others_records(tmp_path, workers):
    """Moesif and a webhook from one backfill; the webhook answers 401 from its fourth batch on. Exit 1 with one
    line naming the webhook; each checkpoint covers only what its own vendor acknowledged (Moesif's need not wait
    for the webhook's); the re-run with the webhook fixed delivers the rest to each, and neither gets a record
    twice that it had before the stop below its checkpoint."""
    log, state = tmp_path / "kong.json", tmp_path / "state"
    seqs = list(range(300))
    gen.write_records(log, seqs)
    with FakeMoesif(APP) as moesif, FakeWebhook() as hook:
        argv = ["--sink", "moesif", "--sink", "webhook", "--endpoint", f"moesif={moesif.url}",
                "--endpoint", f"webhook={hook.url}/hook", "--state-dir", str(state), *FAST,
                "--batch-size", "10", "--concurrency", "1", "--workers", workers]  # fmt: skip
        hook.script(["slow:0"] * 3 + [(401, {})] * 1000)
        first = ship("backfill", str(log), *argv, env=ship_env(MOESIF_APPLICATION_ID=APP))
        moesif_first, hook_first = moesif_seqs(moesif), hook_seqs(hook)
        saved = {lane: checkpointed(state, lane) for lane in ("moesif", "webhook")}
        hook.clear_script()
        again = ship("backfill", str(log), *argv, env=ship_env(MOESIF_APPLICATION_ID=APP))
        moesif_all, hook_all = moesif_seqs(moesif), hook_seqs(hook)
    lines = fatal_lines(first.stderr)
    assert first.returncode == 1 and len(lines) == 1 and "webhook" in lines[0] and "401" in lines[0], lines
    assert len(hook_first) == 30 and max(hook_first.values()) == 1
    for got, lane in ((moesif_first, "moesif"), (hook_first, "webhook")):
        assert below(log, seqs, saved[lane]) <= set(got), lane  # never past what its vendor acknowledged
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert set(moesif_all) == set(hook_all) == set(seqs)
    for got, before, lane in ((moesif_all, moesif_first, "moesif"), (hook_all, hook_first, "webhook")):
        doubled = {s for s, n in got.items() if n > 1}
        assert not doubled & below(log, seqs, saved[lane]), (lane, sorted(doubled)[:10])
        assert doubled <= set(before), lane


# -- routes: one tenant's credential refused --------------------------------------------------------------------
def routes_config(tmp_path, a_url: str, b_url: str, hook_url: str) -> str:
    path = tmp_path / "kong-ship.toml"
    path.write_text(f"""
[routing]
default = ["webhook"]

[sinks.webhook]
endpoint = "{hook_url}"

[[route]]
name = "team-a"
sink = "moesif"
match = {{ workspace_name = ["team-a"] }}
application_id_file = "{tmp_path / 'a.app'}"
endpoint = "{a_url}"

[[route]]
name = "team-b"
sink = "moesif"
match = {{ workspace_name = ["team-b"] }}
endpoint = "{b_url}"
""")
    return str(path)


def write_teams(log, seqs) -> None:
    for seq in seqs:
        team = "team-" + "abc"[seq % 3]
        gen.write_records(log, [seq], extra={"workspace_name": team, "workspace": f"ws-{team}"})


def test_a_routes_credential_refused_names_the_route_and_its_credential_and_holds_back_no_other(tmp_path):
    """Routes moesif@team-a (its application id from a file, revoked: 401) and moesif@team-b (from
    MOESIF_APPLICATION_ID_TEAM_B, fine), the rest to a webhook. Exit 1 with one line naming the lane and where
    its credential comes from (before: "check MOESIF_APPLICATION_ID (or --moesif-application-id-file)", the
    default's, which is not even used); team-a's checkpoint unmoved, the others only past what arrived; the re-run
    with the file fixed delivers every team's records, none twice below a checkpoint."""
    log, state = tmp_path / "kong.json", tmp_path / "state"
    seqs = list(range(240))
    write_teams(log, seqs)
    (tmp_path / "a.app").write_text("app-a-revoked\n")
    env = ship_env(MOESIF_APPLICATION_ID_TEAM_B="app-b", MOESIF_APPLICATION_ID="app-default-unused")
    with FakeMoesif("app-a") as a, FakeMoesif("app-b") as b, FakeWebhook() as hook:
        b.script(["slow:0.05"] * 1000)  # team-b's answers a little slow: the 401 comes while they are delivered
        config = routes_config(tmp_path, a.url, b.url, hook.url + "/hook")
        argv = ["backfill", str(log), "--config", config, "--state-dir", str(state), *FAST, "--batch-size", "8"]
        first = ship(*argv, env=env)
        before = {"a": moesif_seqs(a), "b": moesif_seqs(b), "hook": hook_seqs(hook)}
        saved = {lane: checkpointed(state, lane) for lane in ("moesif@team-a", "moesif@team-b", "webhook")}
        (tmp_path / "a.app").write_text("app-a\n")
        again = ship(*argv, env=env)
        after = {"a": moesif_seqs(a), "b": moesif_seqs(b), "hook": hook_seqs(hook)}
    lines = fatal_lines(first.stderr)
    assert first.returncode == 1 and len(lines) == 1, first.stderr.decode()[-2000:]
    assert "moesif@team-a" in lines[0] and "401" in lines[0], lines
    assert f"application_id_file {tmp_path / 'a.app'}" in lines[0] and "MOESIF_APPLICATION_ID " not in lines[0], lines
    teams = {"a": set(seqs[0::3]), "b": set(seqs[1::3]), "hook": set(seqs[2::3])}
    assert not before["a"] and saved["moesif@team-a"] == 0  # its first record is the first line
    for key, lane in (("b", "moesif@team-b"), ("hook", "webhook")):
        # Other teams' records are set aside at once: below the checkpoint, only the lane's own must have arrived.
        assert below(log, seqs, saved[lane]) & teams[key] <= set(before[key]), lane
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    for key, lane in (("a", "moesif@team-a"), ("b", "moesif@team-b"), ("hook", "webhook")):
        assert set(after[key]) == teams[key], key
        doubled = {s for s, n in after[key].items() if n > 1}
        assert not doubled & below(log, seqs, saved[lane]), (lane, sorted(doubled)[:10])


def test_a_routes_refusal_names_its_own_credential_for_every_sink(tmp_path):
    """What a route's 401 line tells to check: its file when it has one (by absolute path), else its own variable,
    and for an unsigned webhook route its headers (it never reads a variable: routing.build_route_sink)."""
    import httpx

    from shipper.routing import Match, Route, RoutedSink, Selector, credential
    from shipper.sinks.base import FATAL
    from shipper.sinks.webhook import WebhookSink

    def route(sink: str, **options) -> Route:
        return Route("team-a", sink, Match(), options, None)

    assert credential(route("moesif", moesif_application_id_file=str(tmp_path / "a.app"))) == \
        f"application_id_file {tmp_path / 'a.app'} in its [[route]] table"
    assert credential(route("segment")) == "SEGMENT_WRITE_KEY_TEAM_A"
    assert credential(route("runscope")) == "RUNSCOPE_ACCESS_TOKEN_TEAM_A"
    assert "header values" in credential(route("webhook")) and "KONG_SHIP" not in credential(route("webhook"))
    sink = RoutedSink(WebhookSink("http://127.0.0.1:1/hook"), "webhook@team-a", Selector(Match(), [], False),
                      credential(route("webhook")))
    for status in (401, 403):
        verdict = sink.judge(httpx.Response(status, request=httpx.Request("POST", sink.url)))
        assert verdict.kind == FATAL and verdict.reason.startswith("webhook@team-a: ")
        assert "KONG_SHIP_WEBHOOK_SECRET" not in verdict.reason and "its header values" in verdict.reason


def test_a_vendor_asking_for_a_huge_pause_holds_back_only_its_own_sink_and_sigterm_still_stops(tmp_path, shippers):
    """`tail` to Moesif and a webhook; Moesif answers 429 with Retry-After: 99999999 (the sender waits at most an
    hour): the webhook receives every record meanwhile; SIGTERM ends the run within --shutdown-timeout with exit
    0; Moesif's checkpoint has not moved past what it acknowledged (nothing), the webhook's is at the file's end."""
    log, state = tmp_path / "kong.json", tmp_path / "state"
    seqs = list(range(100))
    gen.write_records(log, seqs)
    with FakeMoesif(APP) as moesif, FakeWebhook() as hook:
        moesif.script([(429, {"Retry-After": "99999999"})] * 100)
        proc = shippers("tail", str(log), "--sink", "moesif", "--sink", "webhook", "--endpoint", f"moesif={moesif.url}",
                        "--endpoint", f"webhook={hook.url}/hook", "--state-dir", str(state), *FAST_FOLLOW,
                        "--shutdown-timeout", "2", env=ship_env(MOESIF_APPLICATION_ID=APP))  # fmt: skip
        assert wait_until(lambda: len(hook.snapshot()) >= 100, timeout=30), len(hook.snapshot())
        assert wait_until(lambda: checkpointed(state, "webhook") == log.stat().st_size, timeout=30)
        code, _, err = proc.stop(timeout=30)
        got = hook_seqs(hook)
        moesif_got = moesif_seqs(moesif)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and "429" in err
    assert got == collections.Counter(seqs) and not moesif_got
    assert checkpointed(state, "moesif") == 0


# -- receive: records from the spool to two sinks, one fatal ----------------------------------------------------
def test_receive_to_two_sinks_one_fatal_keeps_every_answered_record_for_both(tmp_path, shippers):
    """`kong-ship receive` takes Kong http-log batches (answered 200 once spooled) for Moesif and a webhook; the
    webhook refuses the credentials (401): receive ends with exit 1 and one line naming it. Started again with the
    webhook fixed, each sink gets every answered record from the spool, the webhook once each, and Moesif none
    twice that it had acknowledged before the stop."""
    token = "ZQ9200002HTTPLOGTOKENQZ"
    env = ship_env(MOESIF_APPLICATION_ID=APP, KONG_SHIP_HTTP_LOG_TOKEN=token)
    state, port = tmp_path / "state", free_port()
    with FakeMoesif(APP) as moesif, FakeWebhook() as hook:
        hook.script([(401, {})] * 1000)
        args = ["--listen", f"127.0.0.1:{port}", "--sink", "moesif", "--sink", "webhook",
                "--endpoint", f"moesif={moesif.url}", "--endpoint", f"webhook={hook.url}/hook",
                "--state-dir", str(state), *FAST]  # fmt: skip
        first = start_receive(shippers, args, env, port)
        answered = set()
        with httpx.Client(timeout=10) as client:
            for start in range(0, 100, 25):
                seqs = range(start, start + 25)
                try:
                    reply = client.post(f"http://127.0.0.1:{port}/http-log",
                                        content=orjson.dumps([gen.kong_record(s) for s in seqs]),
                                        headers={"Authorization": f"Bearer {token}",
                                                 "Content-Type": "application/json"})
                except httpx.TransportError:
                    break  # the receive has stopped (the webhook's 401)
                if reply.status_code == 200:
                    answered.update(seqs)
        code, _, err = first.wait(timeout=30)
        before = moesif_seqs(moesif)
        assert code == 1 and "Traceback" not in err, err[-2000:]
        fatal = [line for line in err.splitlines() if "fatal" in line]
        assert len(fatal) == 1 and "webhook" in fatal[0] and "401" in fatal[0], err[-2000:]
        assert answered, err[-2000:]
        hook.clear_script()
        again = start_receive(shippers, args, env, port)
        hook.wait_for(lambda: set(hook_seqs(hook)) >= answered, timeout=30)
        moesif.wait_for(lambda: set(moesif_seqs(moesif)) >= answered, timeout=30)
        code, _, err = again.stop()
        after, hooked = moesif_seqs(moesif), hook_seqs(hook)
    assert code == 0, err[-2000:]
    assert set(hooked) == set(after) == answered and max(hooked.values()) == 1
    doubled = {s for s, n in after.items() if n > 1}
    print(f"moesif: {len(before)} delivered before the stop, {len(doubled)} sent again")
    assert doubled <= set(before)
