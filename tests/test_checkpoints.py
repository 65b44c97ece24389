"""Acknowledgement tracking and the checkpoint store: only acknowledged, in order, written atomically, and a
corrupt file is recovered loudly or refused, never silently reset."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

import gen
from conftest import ship_env, wait_until

from shipper.delivery.acks import AckTracker
from shipper.errors import ConfigError
from shipper.sources.checkpoints import CheckpointStore, check_state_dir


def test_committed_offset_moves_only_over_a_contiguous_prefix():
    acks = AckTracker()
    acks.start("f", 100)
    seqs = [acks.issue("f") for _ in range(4)]  # lines ending at 110, 120, 130, 140
    acks.ack("f", seqs[1], 120)
    acks.ack("f", seqs[3], 140)
    assert acks.committed() == {"f": 100} and acks.pending() == 4
    acks.ack("f", seqs[0], 110)
    assert acks.committed() == {"f": 120}
    acks.ack_many([("f", seqs[2], 130)])
    assert acks.committed() == {"f": 140} and acks.pending() == 0


def test_forget_keeps_files_with_pending_lines():
    acks = AckTracker()
    acks.start("a", 0)
    acks.start("b", 0)
    acks.issue("a")
    acks.forget("a")
    acks.forget("b")
    assert set(acks.committed()) == {"a"}


def test_store_round_trip_is_atomic_and_keeps_the_previous_copy(tmp_path):
    store = CheckpointStore(str(tmp_path), "segment")
    assert store.load() == {}
    store.update("f1", 10, "/var/log/a", "aa")
    assert store.save()
    store.update("f1", 20, "/var/log/a", "bb")
    assert store.save()
    assert os.path.exists(store.previous)
    assert orjson.loads(open(store.previous, "rb").read())["files"]["f1"]["offset"] == 10
    again = CheckpointStore(str(tmp_path), "segment").load()
    assert again["f1"].offset == 20 and again["f1"].tail == "bb" and again["f1"].path == "/var/log/a"
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_save_writes_only_when_something_moved(tmp_path):
    store = CheckpointStore(str(tmp_path), "s")
    store.load()
    store.update("f", 5, "p", None)
    store.save()
    mtime = os.stat(store.path).st_mtime_ns
    store.update("f", 5, "p", None)
    assert not store.dirty()
    store.save()
    assert os.stat(store.path).st_mtime_ns == mtime


def test_corrupt_checkpoint_recovers_the_previous_copy_and_says_so(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path), "segment")
    store.load()
    store.update("f1", 10, "p", None)
    store.save()
    store.update("f1", 20, "p", None)
    store.save()
    with open(store.path, "wb") as handle:
        handle.write(b'{"version": 1, "files": {"f1": {"offs')  # torn write / disk corruption
    recovered = CheckpointStore(str(tmp_path), "segment").load()
    assert recovered["f1"].offset == 10
    assert "recovered the previous good copy" in caplog.text


def test_corrupt_checkpoint_without_a_good_copy_refuses_to_start(tmp_path):
    store = CheckpointStore(str(tmp_path), "segment")
    with open(store.path, "wb") as handle:
        handle.write(b"\x00\x00garbage")
    with pytest.raises(ConfigError, match="move it aside"):
        CheckpointStore(str(tmp_path), "segment").load()
    with open(store.previous, "wb") as handle:
        handle.write(b"[]")
    with pytest.raises(ConfigError, match="previous copy is unreadable"):
        CheckpointStore(str(tmp_path), "segment").load()


@pytest.mark.parametrize("field, value", [
    ("updated", "yesterday"), ("updated", None), ("updated", [1]), ("path", 5), ("path", None), ("tail", 7),
    ("tail", {"a": 1}), ("offset", True), ("offset", 1.5),
])
def test_an_entry_with_a_field_of_the_wrong_type_is_refused_when_read_not_when_saved(tmp_path, field, value):
    """A hand-edited (or foreign) entry, e.g. `"updated": "yesterday"` for a file not in this run: taken as it
    came, it made every save fail with a TypeError after the run had shipped its records, so each run shipped
    them again. Now the file is unreadable at start: the previous copy, or a one-line refusal."""
    store = CheckpointStore(str(tmp_path), "segment")
    store.update("f1", 10, "/var/log/a.json", "abc")
    store.update("f2", 20, "/var/log/b.json", None)
    doc = orjson.loads(orjson.dumps({"version": 1, "files": {
        k: {"offset": v.offset, "path": v.path, "tail": v.tail, "updated": v.updated} for k, v in store.entries.items()
    }}))
    doc["files"]["f2"][field] = value
    with open(store.path, "wb") as handle:
        handle.write(orjson.dumps(doc))
    with pytest.raises(ConfigError, match=f"bad .*{field}.* for f2|bad offset for f2|bad path or tail for f2"):
        CheckpointStore(str(tmp_path), "segment").load()
    doc["files"]["f2"][field] = {"updated": 5.5, "path": "/var/log/b.json", "tail": None, "offset": 20}[field]
    with open(store.path, "wb") as handle:
        handle.write(orjson.dumps(doc))
    loaded = CheckpointStore(str(tmp_path), "segment")
    assert loaded.load()["f2"].offset == 20
    loaded.update("f1", 11, "/var/log/a.json", "abc")
    assert loaded.save()  # the round trip the bad entry broke


def test_a_state_directory_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create state directory"):
        check_state_dir(str(blocker / "state"))


def test_save_failure_is_logged_once_and_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kong-ship")
    state = tmp_path / "state"
    state.mkdir()
    store = CheckpointStore(str(state), "segment")
    store.load()
    store.update("f", 1, "p", None)
    os.rename(state, tmp_path / "gone")
    state.write_text("")  # a file where the directory was: every write fails
    assert not store.save()
    assert not store.save()
    assert caplog.text.count("cannot save checkpoint") == 1
    state.unlink()
    os.rename(tmp_path / "gone", state)
    assert store.save()
    assert "saved again" in caplog.text


def test_a_deleted_state_directory_is_created_again(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    store = CheckpointStore(str(state), "segment")
    store.load()
    store.update("f", 1, "p", None)
    os.rename(state, tmp_path / "gone")  # deleted by hand while running
    assert store.save()
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    assert oct(os.stat(state / "checkpoints-segment.json").st_mode & 0o777) == "0o600"


def test_a_path_that_is_not_utf8_round_trips_through_the_checkpoint_file(tmp_path):
    """JSON is UTF-8 and a file name need not be: Python holds its other bytes as surrogate escapes, which orjson
    refuses, so every save failed and every run shipped the file again. The name is kept as its bytes."""
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"kong\xff.json"))
    store = CheckpointStore(str(tmp_path), "segment")
    store.update("f1", 10, odd, "abc")
    store.update("f2", 20, str(tmp_path / "plain.json"), None)
    assert store.save()
    doc = orjson.loads(open(store.path, "rb").read())
    assert doc["files"]["f1"]["path"].endswith("kong\\xff.json") and "path_bytes" not in doc["files"]["f2"]
    loaded = CheckpointStore(str(tmp_path), "segment").load()
    assert loaded["f1"].path == odd and loaded["f2"].path == str(tmp_path / "plain.json")


@pytest.mark.parametrize("command", ["backfill", "tail"])
def test_a_log_whose_name_is_not_utf8_is_shipped_once_and_checkpointed(tmp_path, command):
    folder = tmp_path / "logs"
    folder.mkdir()
    log = os.fsdecode(os.path.join(os.fsencode(folder), b"kong\xff.json"))
    gen.write_records(log, range(5))
    with open(log, "ab") as handle:
        handle.write(b"not json\n")  # a dead letter names the file too
    args = [sys.executable, "-m", "shipper", command, f"{folder}/*.json", "--sink", "stdout", "--state-dir",
            str(tmp_path / "state"), "--flush-interval", "0.05", "--log-format", "json"]  # fmt: skip
    for run in range(2):
        if command == "backfill":
            result = subprocess.run(args, capture_output=True, env=ship_env(), timeout=60)
            code, out, err = result.returncode, result.stdout, result.stderr.decode()
        else:
            proc = subprocess.Popen([*args, "--start-at", "beginning", "--poll-interval", "0.05"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ship_env())  # fmt: skip
            if run == 1:
                gen.write_records(log, [100])  # appended: what the second run finds, this one only
            first = b"".join(proc.stdout.readline() for _ in range(5 if run == 0 else 1))  # type: ignore[union-attr]
            wait_until(lambda: (tmp_path / "state" / "checkpoints-stdout.json").exists(), timeout=30)
            time.sleep(0.3)  # a checkpoint save or two
            proc.send_signal(signal.SIGTERM)
            rest, raw_err = proc.communicate(timeout=30)
            code, out, err = proc.returncode, first + rest, raw_err.decode()
        assert code == 0 and "Traceback" not in err, err
        # The second run resumes at the end of the first: nothing again (tail: only the record added since).
        assert len(out.splitlines()) == (5 if run == 0 else 0 if command == "backfill" else 1), out
    letter = orjson.loads((tmp_path / "state" / "dead-letter.jsonl").read_bytes().splitlines()[0])
    assert letter["file"].endswith("kong\\xff.json")
    status = subprocess.run([sys.executable, "-m", "shipper", "status", "--state-dir", str(tmp_path / "state"),
                             "--json"], capture_output=True, env=ship_env(), timeout=60)  # fmt: skip
    assert status.returncode == 0 and orjson.loads(status.stdout)["files"][0]["lag"] == 0, status.stderr


def test_a_checkpoint_file_it_may_not_read_stops_the_run_not_the_checkpoints(tmp_path):
    """A permission problem is no corrupt file: before, a backfill recovered the previous copy (and shipped again
    all since it), or without one said "move it aside to start over" (everything shipped again). Now: one line
    naming the file and the cause, exit 1, nothing shipped, the files left as they are."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: root reads a file of mode 0")
    log = str(tmp_path / "kong.json")
    gen.write_records(log, range(5))
    state = tmp_path / "state"
    args = [sys.executable, "-m", "shipper", "backfill", log, "--sink", "stdout", "--state-dir", str(state)]
    first = subprocess.run(args, capture_output=True, env=ship_env(), timeout=60)
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 5, first.stderr
    gen.write_records(log, range(5, 8))
    store = CheckpointStore(str(state), "stdout")
    if not os.path.exists(store.previous):
        shutil.copyfile(store.path, store.previous)  # a good previous copy, which must not stand in for it either
    saved = open(store.path, "rb").read()
    os.chmod(store.path, 0)
    unprivileged = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]
    for previous in (True, False):
        if not previous:
            os.unlink(store.previous)
        result = subprocess.run([*unprivileged, *args], capture_output=True, env=ship_env(), timeout=60)
        err = [line for line in result.stderr.decode().splitlines() if "INFO" not in line]
        assert result.returncode == 1 and result.stdout == b"", result.stderr
        assert len(err) == 1 and f"cannot read the checkpoint file {store.path}: Permission denied" in err[0], err
        assert "move it aside" not in err[0]
    os.chmod(store.path, 0o600)
    assert open(store.path, "rb").read() == saved


def test_a_second_run_on_the_same_checkpoints_is_refused_while_the_first_runs(tmp_path):
    """A `backfill` by hand beside the `tail` service, same state directory and sink: before, both shipped every
    record (40 for 20 here), and each saved its positions over the other's. Now the second is one line, exit 2,
    nothing shipped; once the first has stopped, the same run works (and finds everything acknowledged)."""
    log = str(tmp_path / "kong.json")
    gen.write_records(log, range(20))
    state = str(tmp_path / "state")
    common = ["--state-dir", state, "--flush-interval", "0.05"]
    tail = subprocess.Popen([sys.executable, "-m", "shipper", "tail", log, "--sink", "stdout", *common,
                             "--start-at", "beginning", "--poll-interval", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ship_env())  # fmt: skip
    try:
        shipped = [tail.stdout.readline() for _ in range(20)]  # type: ignore[union-attr]
        assert all(shipped)
        backfill = [sys.executable, "-m", "shipper", "backfill", log, "--sink", "stdout", *common]
        second = subprocess.run(backfill, capture_output=True, env=ship_env(), timeout=60)
        err = second.stderr.decode().splitlines()
        assert (second.returncode, second.stdout, len(err)) == (2, b"", 1), second.stderr
        assert "another kong-ship is shipping with the checkpoints in" in err[0] and "--state-dir" in err[0]
    finally:
        tail.send_signal(signal.SIGTERM)
        rest, tail_err = tail.communicate(timeout=30)
    assert tail.returncode == 0 and rest == b"", tail_err
    again = subprocess.run(backfill, capture_output=True, env=ship_env(), timeout=60)
    assert again.returncode == 0 and again.stdout == b"", again.stderr  # all 20 acknowledged by the tail


def test_each_sinks_checkpoints_are_locked_on_their_own(tmp_path):
    first, other = CheckpointStore(str(tmp_path), "segment"), CheckpointStore(str(tmp_path), "moesif")
    first.lock()
    other.lock()  # another sink in the same state directory: no conflict
    with pytest.raises(ConfigError, match="another kong-ship is shipping"):
        CheckpointStore(str(tmp_path), "segment").lock()
    first.unlock()
    again = CheckpointStore(str(tmp_path), "segment")
    again.lock()  # released
    assert oct(os.stat(tmp_path / "checkpoints-segment.lock").st_mode & 0o777) == "0o600"
    again.unlock()
    other.unlock()
