"""What kong-ship writes: private whatever the umask, and never acknowledged past when the disk refuses it (a
real full tmpfs, a real read-only remount, the state directory deleted while running)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import httpx
import orjson
import pytest

import gen
from conftest import FAST, FAST_FOLLOW, ship_env, wait_until
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from mounts import fill, remount, tmpfs
from test_faults import assert_exactly_once
from fakes.webhook import kong_signature
from test_receive import ENV as RECEIVE_ENV
from test_receive import SECRET, free_port, kong_event

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")
BAD = b"this is not a log record\n"


def modes(root) -> dict[str, str]:
    """Every path under `root` (itself included) → its permission bits, octal."""
    out = {str(root): oct(stat.S_IMODE(os.stat(root).st_mode))}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            out[path] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return out


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_state_is_private_whatever_the_umask(shippers, tmp_path, umask):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    with open(log, "ab") as handle:
        handle.write(BAD)
    state = tmp_path / "new" / "state"  # two levels created by kong-ship
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout", "--state-dir", str(state)],
        capture_output=True, env=ENV, umask=umask, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    with FakeWebhook() as fake:  # receive under the same umask: its spool, lock and checkpoints
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "receive", "--listen", f"127.0.0.1:{port}", "--sink", "webhook",
             "--endpoint", fake.url, "--state-dir", str(state), *FAST],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=RECEIVE_ENV, umask=umask,
        )  # fmt: skip
        try:
            body = orjson.dumps(kong_event(1))
            headers = {"Content-Type": "application/json", "X-Kong-Signature": kong_signature(SECRET.encode(), body)}

            def post():
                try:
                    return httpx.post(f"http://127.0.0.1:{port}/", content=body, headers=headers).status_code == 200
                except httpx.TransportError:
                    return proc.poll() is not None

            assert wait_until(post, timeout=20) and proc.poll() is None
            fake.wait_for(lambda: fake.events, timeout=10)
        finally:
            proc.terminate()
            proc.wait(20)
    found = modes(tmp_path / "new")
    names = {os.path.basename(p) for p in found}
    assert {"dead-letter.jsonl", "checkpoints-stdout.json", "receive", ".lock", "checkpoints-webhook.json"} <= names
    assert any(n.startswith("spool-") for n in names)
    wrong = {p: m for p, m in found.items() if m != ("0o700" if os.path.isdir(p) else "0o600")}
    assert not wrong, wrong


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def dead_letters(path) -> list[dict]:
    try:
        with open(path, "rb") as handle:
            return [orjson.loads(line) for line in handle]
    except FileNotFoundError:
        return []


def test_a_full_state_directory_holds_the_line_until_its_dead_letter_is_written(shippers, tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    with FakeSegment() as segment, tmpfs(tmp_path / "small", "1m") as state:
        proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", state,
                        *FAST_FOLLOW, env=ENV)  # fmt: skip
        segment.wait_for(lambda: len(segment.messages) >= 10, timeout=15)
        filler = fill(state)  # the disk fills up while running
        with open(log, "ab") as handle:
            handle.write(BAD * 3)
        gen.write_records(log, range(10, 20))
        time.sleep(2.0)  # many retries
        assert proc.proc.poll() is None, proc.wait()[2]
        assert not dead_letters(os.path.join(state, "dead-letter.jsonl"))
        assert len(segment.messages) == 10  # held behind the line whose dead letter cannot be written
        os.unlink(filler)
        segment.wait_for(lambda: len(segment.messages) >= 20, timeout=15)
        assert wait_until(lambda: len(dead_letters(os.path.join(state, "dead-letter.jsonl"))) == 3)
        code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(20))
    assert len(lines_with(err, "cannot write the dead-letter file")) == 1, err
    assert "No space left on device" in err and "written again" in err and "Traceback" not in err


def test_a_read_only_state_directory_holds_the_line_and_recovers(shippers, tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    with FakeSegment() as segment, tmpfs(tmp_path / "small", "1m") as state:
        proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", state,
                        *FAST_FOLLOW, env=ENV)  # fmt: skip
        segment.wait_for(lambda: len(segment.messages) >= 5, timeout=15)
        time.sleep(1.2)  # the checkpoint of the first five is saved (and its file closed)
        remount(state, "ro")
        try:
            with open(log, "ab") as handle:
                handle.write(BAD)
            gen.write_records(log, range(5, 10))
            time.sleep(1.5)
            assert proc.proc.poll() is None
            assert len(segment.messages) == 5  # held behind the line whose dead letter cannot be written
        finally:
            remount(state, "rw")
        segment.wait_for(lambda: len(segment.messages) >= 10, timeout=15)
        assert wait_until(lambda: len(dead_letters(os.path.join(state, "dead-letter.jsonl"))) == 1)
        code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(10))
    assert len(lines_with(err, "cannot write the dead-letter file")) == 1, err
    assert "Read-only file system" in err


def test_a_state_directory_deleted_while_running_is_created_again(shippers, tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    with open(log, "ab") as handle:
        handle.write(BAD)  # the dead-letter file is open when its directory goes
    state = tmp_path / "state"
    with FakeSegment() as segment:
        proc = shippers("tail", str(log), "--sink", "segment", "--endpoint", segment.url, "--state-dir", str(state),
                        *FAST_FOLLOW, env=ENV)  # fmt: skip
        segment.wait_for(lambda: len(segment.messages) >= 5, timeout=15)
        assert wait_until(lambda: (state / "checkpoints-segment.json").exists())
        assert len(dead_letters(state / "dead-letter.jsonl")) == 1
        shutil.rmtree(state)
        with open(log, "ab") as handle:
            handle.write(BAD)
        gen.write_records(log, range(5, 10))
        segment.wait_for(lambda: len(segment.messages) >= 10, timeout=15)
        assert wait_until(lambda: len(dead_letters(state / "dead-letter.jsonl")) == 1)
        assert wait_until(lambda: (state / "checkpoints-segment.json").exists())
        code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(10))
    saved = orjson.loads((state / "checkpoints-segment.json").read_bytes())
    assert [entry["offset"] for entry in saved["files"].values()] == [os.path.getsize(log)]


def test_audit_tail_on_a_full_disk_says_so_once_and_ships_everything_after(shippers, tmp_path):
    from fakes.kong_admin import FakeKongAdmin

    token = tmp_path / "token"
    token.write_text("admin-token\n")
    with FakeKongAdmin("admin-token") as admin, FakeSegment() as segment, tmpfs(tmp_path / "small", "1m") as state:
        first = admin.add_request(1700000000, signed=False)
        proc = shippers("audit", "tail", "--admin-url", admin.url, "--admin-token-file", str(token), "--sink",
                        "segment", "--endpoint", segment.url, "--state-dir", state, "--interval", "0.1", *FAST,
                        env=ENV)  # fmt: skip
        segment.wait_for(lambda: len(segment.messages) >= 1, timeout=15)
        filler = fill(state)
        # Records too big for what the full disk has left: a JSON body is spooled as it is (a body of no known
        # shape would be withheld, and its few bytes would fit).
        big = orjson.dumps({"note": "x" * 20_000}).decode()
        later = [admin.add_request(1700000001 + i, signed=False, payload=big) for i in range(3)]
        time.sleep(1.5)  # about fifteen polls that cannot keep their records
        assert len(segment.messages) == 1
        os.unlink(filler)
        ids = {f"kong-audit-request-{r['request_id']}" for r in [first, *later]}
        segment.wait_for(lambda: set(segment.message_ids()) == ids, timeout=15)
        code, _, err = proc.stop()
    assert code == 0, err
    assert len(lines_with(err, "cannot keep the records")) == 1, err
    assert "written again" in err


def test_receive_whose_state_directory_is_deleted_spools_into_a_new_one(shippers, tmp_path):
    from test_receive import Receive, delivered

    with FakeWebhook() as fake:
        rx = Receive(shippers, tmp_path, fake)
        assert rx.post(kong_event(1)).status_code == 200
        fake.wait_for(lambda: sorted(delivered(fake)) == [1], timeout=10)
        shutil.rmtree(tmp_path / "state")
        assert rx.post(kong_event(2)).status_code == 200  # durable: in a segment that exists
        assert any(name.startswith("spool-") for name in os.listdir(tmp_path / "state" / "receive"))
        fake.wait_for(lambda: sorted(delivered(fake)) == [1, 2], timeout=10)
        code, _, err = rx.proc.stop()
    assert code == 0, err
