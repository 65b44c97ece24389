"""`kong-ship tail` against odd input and odd disks, as a real process (tests/tailrun.py): lines completed long
after their file was rotated, lines over --max-line-bytes, CRLF, NULs, a log replaced by a directory or a FIFO;
new files that begin like the old ones (a look-alike takes no old position: its first lines were lost); the
state directory's disk full, and a stop while it is."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import orjson

import gen
from conftest import FAST_FOLLOW, fill, reaped, summary_rows, wait_until
from tailrun import ENV, arrived, exactly_once, fixed_line, rename_rotate, size


# -- odd input while following ------------------------------------------------------------------------------------
def line_of(seq: int) -> bytes:
    return gen.kong_line(gen.kong_record(seq))


def test_a_partial_last_line_completed_long_after_its_file_was_rotated(segment, tmp_path, tails):
    """Half a line, then rotation; the line is completed in the rotated file a second later (the writer took
    that long): under the glob the rotated file is still followed, and the line ships once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    half = line_of(50)
    with open(log, "ab") as handle:
        handle.write(half[:700])
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 50)
    os.rename(log, tmp_path / "kong.json.1")
    gen.write_records(log, range(51, 60))
    arrived(segment, 59)
    time.sleep(1.0)  # "much later": past --rotate-wait, the writer long gone to the new file
    with open(tmp_path / "kong.json.1", "ab") as handle:
        handle.write(half[700:])
    arrived(segment, 60)
    tail.stop()
    exactly_once(segment, range(60))


def test_a_partial_last_line_across_a_restart(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    half = line_of(20)
    with open(log, "ab") as handle:
        handle.write(half[:-300])
    tail = tails(tmp_path, segment, log)
    arrived(segment, 20)
    err = tail.stop()
    assert "Traceback" not in err
    with open(log, "ab") as handle:
        handle.write(half[-300:])
    gen.write_records(log, range(21, 30))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 30)
    tail.stop()
    exactly_once(segment, range(30))


def test_a_line_over_max_line_bytes_appended_slowly_across_a_rotation(segment, tmp_path, tails):
    """A 40 KB line arrives in 2 KB pieces; half-way the file is rotated and the rest lands in the rotated file.
    It is set aside once (dead letter), every other record arrives once."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--max-line-bytes", "8192")
    arrived(segment, 10)
    big = gen.kong_line(gen.kong_record(10, **{}))[:-2] + b',"pad":"' + b"x" * 40_000 + b'"}\n'
    pieces = [big[i : i + 2048] for i in range(0, len(big), 2048)]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    for n, piece in enumerate(pieces):
        os.write(fd, piece)
        if n == len(pieces) // 2:
            os.rename(log, tmp_path / "kong.json.1")
            gen.write_records(log, range(11, 20))
        time.sleep(0.01)
    os.close(fd)
    gen.write_records(tmp_path / "kong.json.1", range(20, 25))
    arrived(segment, 24)
    dead = tmp_path / "state" / "dead-letter.jsonl"
    assert wait_until(lambda: dead.exists() and dead.read_bytes().count(b"\n") >= 1, timeout=10)
    err = tail.stop()
    exactly_once(segment, [s for s in range(25) if s != 10])
    assert dead.read_bytes().count(b"\n") == 1, dead.read_bytes()[:500]
    assert summary_rows(err)["segment"]["dead-lettered"] == 1, err[-1500:]


def test_crlf_line_ends_ship_every_record_once(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    with open(log, "wb") as handle:
        handle.write(b"".join(line_of(s)[:-1] + b"\r\n" for s in range(40)))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 40)
    with open(log, "ab") as handle:
        handle.write(b"".join(line_of(s)[:-1] + b"\r\n" for s in range(40, 50)))
    arrived(segment, 50)
    tail.stop()
    exactly_once(segment, range(50))


def test_nuls_of_a_sparse_file_after_copytruncate_with_a_writer_that_keeps_its_offset(segment, tmp_path, tails):
    """A writer without O_APPEND (not Kong, but nginx-like setups exist) writes at its old offset after a
    copytruncate: the file starts with a hole of NULs. The records written after the hole arrive once, the
    copied ones once; no traceback, and the NULs are not taken for a record."""
    log = tmp_path / "kong.json"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    for seq in range(30):
        os.write(fd, line_of(seq))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 30)
    shutil.copyfile(log, tmp_path / "kong.json.1")
    os.truncate(log, 0)
    os.write(fd, b"\n")  # the first write after the truncate ends the hole (a writer's record separator)
    for seq in range(30, 60):
        os.write(fd, line_of(seq))
    os.close(fd)
    arrived(segment, 60)
    tail.stop()
    exactly_once(segment, range(60))


def test_the_log_replaced_by_a_directory_and_back(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(20))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 20)
    os.unlink(log)
    os.mkdir(log)
    assert wait_until(lambda: "is a directory" in tail.stderr(), timeout=10)
    assert tail.proc.poll() is None
    os.rmdir(log)
    gen.write_records(log, range(20, 40))
    arrived(segment, 40)
    err = tail.stop()
    exactly_once(segment, range(40))
    assert err.count("is a directory") == 1


def test_the_log_replaced_by_a_fifo(segment, tmp_path, tails):
    """A named pipe where the log was: said once, never opened (an open would block the reader for good)."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(10))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 10)
    os.rename(log, tmp_path / "kong.json.1")
    os.mkfifo(log)
    assert wait_until(lambda: "not a regular file" in tail.stderr(), timeout=10)
    gen.write_records(tmp_path / "kong.json.1", range(10, 20))
    arrived(segment, 20)
    tail.stop()
    exactly_once(segment, range(20))


# -- the state directory's disk full ------------------------------------------------------------------------------
def test_state_disk_full_while_rotating_then_free_again(segment, tmp_path, tiny_fs, tails):
    """Checkpoints cannot be saved while the log is rotated twice (delivery goes on); once space is back the
    checkpoint catches up, SIGTERM exits 0, and a second run resends nothing."""
    log = tmp_path / "kong.json"
    state = tiny_fs / "state"
    gen.write_records(log, range(50))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", state=state)
    arrived(segment, 50)
    assert wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)
    writer = gen.Writer(log, range(50, 650), rate=3000)
    writer.start()
    for n in range(2):
        wait_until(lambda: size(log) > 150_000, timeout=10)
        rename_rotate(log, writer, tmp_path / f"kong.json.{n}")
    assert writer.done.wait(30)
    arrived(segment, 650)
    assert wait_until(lambda: "No space left" in tail.stderr(), timeout=10)
    os.unlink(tiny_fs / "filler")
    assert wait_until(lambda: "saved again" in tail.stderr(), timeout=10)
    err = tail.stop()
    assert "Traceback" not in err
    exactly_once(segment, range(650))
    delivered = segment.message_count
    again = tails(tmp_path, segment, tmp_path / "kong.json*", state=state)
    gen.write_records(log, [650])
    arrived(segment, 651)
    again.stop()
    assert segment.message_count == delivered + 1


def test_a_long_line_while_the_dead_letter_disk_is_full_is_set_aside_once_space_is_back(segment, tmp_path, tiny_fs, tails):
    """The dead-letter file (in the state directory) cannot be written: nothing after the long line is
    acknowledged meanwhile; once space is back, the long line is set aside once and every record arrives once."""
    log = tmp_path / "kong.json"
    state = tiny_fs / "state"
    gen.write_records(log, range(20))
    tail = tails(tmp_path, segment, log, "--max-line-bytes", "4096", state=state)
    arrived(segment, 20)
    assert wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)
    with open(log, "ab") as handle:
        handle.write(b'{"x":"' + b"y" * 10_000 + b'"}\n')
    gen.write_records(log, range(20, 40))
    assert wait_until(lambda: "cannot write the dead-letter file" in tail.stderr(), timeout=10)
    os.unlink(tiny_fs / "filler")
    arrived(segment, 40)
    err = tail.stop()
    exactly_once(segment, range(40))
    assert (state / "dead-letter.jsonl").read_bytes().count(b"\n") == 1
    assert summary_rows(err)["segment"]["dead-lettered"] == 1


# -- files that begin like the old one ------------------------------------------------------------------------------
def blank_file(path, seqs, mode: str = "wb") -> None:
    """A blank first line (the fingerprint every such file shares), then records of one length."""
    with open(path, mode) as handle:
        handle.write(b"\n" + b"".join(fixed_line(s) for s in seqs))


def test_a_new_file_beginning_like_the_old_one_is_read_from_its_start_after_a_restart(segment, tmp_path, tails):
    """Rotated while kong-ship was stopped, and the new file begins as the old one did: its lines (the same
    length, as a fixed route's are) fall on the old checkpoint's offset, and the 64 bytes before it (the same
    end of every Kong line) hashed the same, so it took the old position. Before 4 KiB tail hashes, 100 of its
    200 records were never read."""
    log = tmp_path / "kong.json"
    blank_file(log, range(10_000, 10_100))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 100)
    tail.stop()
    os.rename(log, tmp_path / "kong.json.1")  # logrotate, while kong-ship is stopped
    blank_file(log, range(20_000, 20_200))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 300)
    tail.stop()
    exactly_once(segment, [*range(10_000, 10_100), *range(20_000, 20_200)])


def test_a_look_alike_after_a_quiet_rotation_is_read_from_its_start(segment, tmp_path, tails):
    """The same without a restart: the old file let go (a quiet gateway, past --rotate-wait) before the new one
    appears; the position this run remembers for it is not the new file's."""
    log = tmp_path / "kong.json"
    blank_file(log, range(10_000, 10_100))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 100)
    os.rename(log, tmp_path / "kong.json.1")
    assert wait_until(lambda: "done with the old" in tail.stderr(), timeout=10)
    blank_file(log, range(20_000, 20_200))
    arrived(segment, 300)
    tail.stop()
    exactly_once(segment, [*range(10_000, 10_100), *range(20_000, 20_200)])


def test_a_file_truncated_and_rewritten_alike_and_longer_while_frozen_is_read_again(segment, tmp_path, tails):
    """copytruncate, then a burst of new records, all between two looks: the same first line and a size past
    our position hid the rewrite; the bytes before our position (read again before each read) show it."""
    log = tmp_path / "kong.json"
    blank_file(log, range(10_000, 10_100))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 100)
    tail.freeze()
    os.truncate(log, 0)
    blank_file(log, range(20_000, 20_200), "ab")
    tail.thaw()
    arrived(segment, 300)
    tail.stop()
    exactly_once(segment, [*range(10_000, 10_100), *range(20_000, 20_200)])


def test_a_checkpoint_with_a_tail_hash_of_64_bytes_still_resumes(segment, tmp_path, tails):
    """Checkpoints written before the 4 KiB tail hashes (16 hex digits over 64 bytes) confirm as they did: an
    upgrade does not ship every file again."""
    import hashlib

    log = tmp_path / "kong.json"
    gen.write_records(log, range(50))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 50)
    tail.stop()
    path = tmp_path / "state" / "checkpoints-segment.json"
    doc = orjson.loads(path.read_bytes())
    (entry,) = doc["files"].values()
    assert entry["tail"].startswith("2:") and entry["offset"] == log.stat().st_size
    entry["tail"] = hashlib.blake2b(log.read_bytes()[entry["offset"] - 64 : entry["offset"]], digest_size=8).hexdigest()
    path.write_bytes(orjson.dumps(doc))
    gen.write_records(log, range(50, 60))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 60)
    tail.stop()
    exactly_once(segment, range(60))


def test_a_stop_whose_last_checkpoint_save_failed_says_so_and_exits_1(segment, tmp_path, tiny_fs, tails):
    """SIGTERM while the state disk is full: the last save fails; systemd (or an upgrade script) reading exit 0
    would not know that the next start sends again what came after the last one saved."""
    log = tmp_path / "kong.json"
    state = tiny_fs / "state"
    gen.write_records(log, range(50))
    tail = tails(tmp_path, segment, log, state=state)
    arrived(segment, 50)
    assert wait_until(lambda: (state / "checkpoints-segment.json").exists(), timeout=10)
    fill(tiny_fs)
    gen.write_records(log, range(50, 100))
    arrived(segment, 100)
    assert wait_until(lambda: "No space left" in tail.stderr(), timeout=10)
    tail.proc.send_signal(signal.SIGTERM)
    assert tail.proc.wait(30) == 1
    err = tail.stderr()
    assert "Traceback" not in err and "could not be saved at the end" in err.splitlines()[-1], err[-2000:]


def test_more_matching_files_than_descriptors_still_ship_every_record(segment, tmp_path):
    """80 rotated files under the glob and a limit of 64 descriptors: the reader took every one of them, and
    nothing could be sent (no socket), saved or even globbed. It holds half the limit open now, closing files
    read to their end to make room for the others."""
    for n in range(80):
        gen.write_records(tmp_path / f"kong.json.{n}", range(n * 5, n * 5 + 5))
    argv = [sys.executable, "-m", "shipper", "tail", str(tmp_path / "kong.json*"), "--sink", "segment",
            "--endpoint", segment.url, "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW]  # fmt: skip
    with open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=ENV, start_new_session=True,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))  # fmt: skip
    with reaped(proc):
        arrived(segment, 400, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = (tmp_path / "err").read_text()
    assert "Traceback" not in text and "half the descriptor limit" in text, text[-2000:]
    exactly_once(segment, range(400))
