"""Input paths and loss, as a real `kong-ship` process sees them: lines longer than a read, inputs that cannot be
read, files that begin alike, copytruncate under fast rotation, the real logrotate. Every record carries a unique
seq; each test checks the exact set that arrived (and, for dead letters, the exact offsets)."""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

import gen
from conftest import FAST, FAST_FOLLOW, ship, ship_env, wait_until
from fakes.segment import FakeSegment
from test_faults import assert_exactly_once, counts

ENV = ship_env(SEGMENT_WRITE_KEY="test-key")
LIMIT = 200_000  # --max-line-bytes for the long-line tests: 300 KB, 700 KB and 2 MB lines are all too long
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def segment():
    with FakeSegment() as fake:
        yield fake


def ship_args(fake, tmp_path, *more, follow=False):
    return ["--sink", "segment", "--endpoint", fake.url, "--state-dir", str(tmp_path / "state"),
            *(FAST_FOLLOW if follow else FAST), *more]  # fmt: skip


def dead_letters(tmp_path) -> list[dict]:
    path = tmp_path / "state" / "dead-letter.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


# -- long lines ---------------------------------------------------------------------------------------------------
def long_line(seq: int, size: int) -> bytes:
    """A Kong record of about `size` bytes (a big response header), seq inside as usual."""
    record = gen.kong_record(seq)
    record["response"]["headers"]["x-padding"] = "p" * size
    return gen.kong_line(record)


class Layout:
    """Builds a log file of normal records and long lines, and remembers the seqs and the long lines' offsets."""

    def __init__(self, path: pathlib.Path, first_seq: int):
        self.path, self.seq, self.data = path, first_seq, bytearray()
        self.normal: list[int] = []
        self.long: list[tuple[int, int]] = []  # (offset, seq)

    def records(self, n: int) -> Layout:
        for _ in range(n):
            self.data += gen.kong_line(gen.kong_record(self.seq))
            self.normal.append(self.seq)
            self.seq += 1
        return self

    def long_line(self, size: int, newline: bool = True) -> Layout:
        line = long_line(self.seq, size)
        self.long.append((len(self.data), self.seq))
        self.data += line if newline else line.rstrip(b"\n")
        self.seq += 1
        return self

    def write(self, compress: bool = False) -> Layout:
        if compress:
            self.path = self.path.with_name(self.path.name + ".gz")
            self.path.write_bytes(gzip.compress(bytes(self.data), compresslevel=1))
        else:
            self.path.write_bytes(bytes(self.data))
        return self


def long_line_files(tmp_path: pathlib.Path, compress: bool) -> list[Layout]:
    suffix = "gz" if compress else "plain"
    return [
        # at the start, in the middle, at the end (with its newline): 300 KB, 700 KB, 2 MB
        Layout(tmp_path / f"a-{suffix}.json", 0 if not compress else 10_000).long_line(300_000).records(40)
        .long_line(700_000).records(40).long_line(2_000_000).records(40).long_line(700_000).write(compress),
        # the last line has no newline
        Layout(tmp_path / f"b-{suffix}.json", 20_000 if not compress else 30_000).records(30)
        .long_line(2_000_000, newline=False).write(compress),
    ]  # fmt: skip


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_backfill_dead_letters_long_lines_and_ships_every_other_line(segment, tmp_path, compress):
    files = long_line_files(tmp_path, compress)
    result = ship("backfill", *(str(f.path) for f in files), *ship_args(segment, tmp_path, "--max-line-bytes",
                                                                        str(LIMIT)), env=ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_exactly_once(segment, [s for f in files for s in f.normal])
    letters = dead_letters(tmp_path)
    assert {d["reason"] for d in letters} == {"too_long"} and all(len(d["line"]) <= 4096 for d in letters)
    expected = {(str(f.path), off) for f in files for off, _ in f.long}
    if not compress:
        # A plain file's unterminated last line may still get its newline: reported, not shipped or dropped.
        last = files[1]
        expected.discard((str(last.path), last.long[-1][0]))
        assert f"{last.path} ends with {len(last.data) - last.long[-1][0]} bytes" in result.stderr.decode()
    assert {(d["file"], d["offset"]) for d in letters} == expected
    # A second run has nothing left to do: the long lines did not stop the checkpoints either.
    again = ship("backfill", *(str(f.path) for f in files), *ship_args(segment, tmp_path, "--max-line-bytes",
                                                                       str(LIMIT)), env=ENV)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert_exactly_once(segment, [s for f in files for s in f.normal])


def test_parse_prints_lines_under_the_limit_however_long_and_reports_the_others(tmp_path):
    plain = long_line_files(tmp_path, compress=False)
    packed = long_line_files(tmp_path, compress=True)
    files = plain + packed
    result = subprocess.run([sys.executable, "-m", "shipper", "parse", *(str(f.path) for f in files)],
                            capture_output=True, env=ENV, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = collections.Counter(int(orjson.loads(line)["query"]["seq"]) for line in result.stdout.splitlines())
    # Default --max-line-bytes (1 MiB): the 300 KB and 700 KB lines are records like any other.
    under = [seq for f in files for off, seq in f.long if seq not in _over_a_mib(f)]
    plain_last = plain[1].long[-1][1]  # unterminated: not printed (nor is it under the limit)
    expected = [s for f in files for s in f.normal] + [s for s in under if s != plain_last]
    assert sorted(printed) == sorted(expected) and max(printed.values()) == 1
    err = result.stderr.decode()
    assert f"{plain[1].path}: ends with {len(plain[1].data) - plain[1].long[-1][0]} bytes" in err, err
    for f in files:
        for off, seq in f.long:
            if seq in _over_a_mib(f) and not (f is plain[1] and seq == plain_last):
                assert f"{f.path}: offset {off}: too_long" in err, err


def _over_a_mib(layout: Layout) -> set[int]:
    sizes = {}
    for off, seq in layout.long:
        end = layout.data.find(b"\n", off)
        sizes[seq] = (end if end >= 0 else len(layout.data)) - off
    return {seq for seq, size in sizes.items() if size > 1 << 20}


def test_tail_dead_letters_long_lines_and_ships_every_other_line(segment, tmp_path, shippers):
    (tmp_path / "logs").mkdir()
    files = long_line_files(tmp_path / "logs", compress=False)
    proc = shippers("tail", str(tmp_path / "logs" / "*.json"),
                    *ship_args(segment, tmp_path, "--max-line-bytes", str(LIMIT), follow=True), env=ENV)  # fmt: skip
    normal = [s for f in files for s in f.normal]
    segment.wait_for(lambda: len(segment.messages) >= len(normal), timeout=30)
    with open(files[1].path, "ab") as handle:
        handle.write(b"\n")  # the unterminated long line is finished: now it is a (too long) line
    gen.write_records(files[1].path, [40_000])
    segment.wait_for(lambda: len(segment.messages) >= len(normal) + 1, timeout=30)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, normal + [40_000])
    expected = {(str(f.path), off) for f in files for off, _ in f.long}
    assert {(d["file"], d["offset"]) for d in dead_letters(tmp_path)} == expected


# -- inputs that cannot be read -----------------------------------------------------------------------------------
def unprivileged() -> list[str]:
    """A command prefix under which a mode-000 file cannot be read: as root, without the capabilities that let
    root read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); as another user, nothing is needed."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a mode-000 file would still be readable")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


def bad_inputs(tmp_path: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    good = tmp_path / "good.json"
    gen.write_records(good, range(50))
    locked = tmp_path / "locked.json"
    gen.write_records(locked, range(1000, 1010))
    locked.chmod(0)
    (tmp_path / "a-directory").mkdir()
    os.mkfifo(tmp_path / "a-fifo.json")  # opening it for reading would block forever
    inputs = [str(good), str(locked), str(tmp_path / "a-directory"), str(tmp_path / "a-fifo.json"),
              str(tmp_path / "nothing-*.json"), str(tmp_path / "missing.json")]  # fmt: skip
    why = {
        str(locked): "Permission denied",
        str(tmp_path / "a-directory"): "is a directory",
        str(tmp_path / "a-fifo.json"): "is a FIFO",
        str(tmp_path / "nothing-*.json"): "no file matches",
        str(tmp_path / "missing.json"): "no such file",
    }
    return inputs, why


def assert_each_named(stderr: bytes, why: dict[str, str]) -> None:
    lines = stderr.decode().splitlines()
    for path, reason in why.items():
        named = [line for line in lines if path in line and reason in line]
        assert len(named) == 1, (path, reason, lines)


def test_backfill_names_each_unreadable_input_ships_the_rest_and_exits_1(segment, tmp_path):
    inputs, why = bad_inputs(tmp_path)
    result = subprocess.run([*unprivileged(), sys.executable, "-m", "shipper", "backfill", *inputs,
                             *ship_args(segment, tmp_path)], capture_output=True, env=ENV, timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert_each_named(result.stderr, why)
    assert_exactly_once(segment, range(50))


def test_parse_names_each_unreadable_input_prints_the_rest_and_exits_1(tmp_path):
    inputs, why = bad_inputs(tmp_path)
    result = subprocess.run([*unprivileged(), sys.executable, "-m", "shipper", "parse", *inputs],
                            capture_output=True, env=ENV, timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert_each_named(result.stderr, why)
    assert sorted(int(orjson.loads(line)["query"]["seq"]) for line in result.stdout.splitlines()) == list(range(50))


def test_tail_says_once_that_a_pattern_matches_nothing_and_reads_the_file_when_it_appears(segment, tmp_path):
    pattern = str(tmp_path / "kong-*.json")
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "shipper", "tail", pattern,
                                 *ship_args(segment, tmp_path, follow=True)], stderr=err_file, env=ENV)  # fmt: skip
    try:
        # The file appears only once kong-ship has looked and found nothing, and looked again a few times.
        assert wait_until(lambda: b"no file matches" in stderr.read_bytes(), timeout=15), stderr.read_text()
        time.sleep(0.3)
        gen.write_records(tmp_path / "kong-1.json", range(20))
        segment.wait_for(lambda: len(segment.messages) >= 20, timeout=15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_exactly_once(segment, range(20))
    err = stderr.read_text()
    assert len([line for line in err.splitlines() if "no file matches" in line and pattern in line]) == 1, err


# -- files that begin alike ---------------------------------------------------------------------------------------
COOKIE = "session=" + "c" * 5000  # the first records of two nodes differ only after this


def cookie_line(seq: int) -> bytes:
    record = gen.kong_record(seq)
    return gen.kong_line({"cookie": COOKIE, **record})  # first in the line: the first 4 KiB are the same


def alike_files(tmp_path: pathlib.Path) -> tuple[list[pathlib.Path], list[int]]:
    """Two nodes whose first lines agree for 5 KB, and two files that both begin with a blank line."""
    paths = [tmp_path / f"node-{n}.json" for n in "abcd"]
    paths[0].write_bytes(b"".join(cookie_line(s) for s in range(0, 30)))
    paths[1].write_bytes(b"".join(cookie_line(s) for s in range(100, 130)))
    paths[2].write_bytes(b"\n" + b"".join(gen.kong_line(gen.kong_record(s)) for s in range(200, 230)))
    paths[3].write_bytes(b"\n" + b"".join(gen.kong_line(gen.kong_record(s)) for s in range(300, 330)))
    return paths, [*range(30), *range(100, 130), *range(200, 230), *range(300, 330)]


def test_backfill_reads_files_that_begin_alike_each_in_full(segment, tmp_path):
    paths, seqs = alike_files(tmp_path)
    result = ship("backfill", str(tmp_path / "node-*.json"), *ship_args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(segment, seqs)
    # and their checkpoints keep them apart: more lines in each, a second run ships exactly those
    for n, path in enumerate(paths):
        with open(path, "ab") as handle:
            handle.write(cookie_line(500 + n) if n < 2 else gen.kong_line(gen.kong_record(500 + n)))
    again = ship("backfill", str(tmp_path / "node-*.json"), *ship_args(segment, tmp_path), env=ENV)
    assert again.returncode == 0, again.stderr
    assert_exactly_once(segment, seqs + [500, 501, 502, 503])


def test_tail_reads_files_that_begin_alike_each_in_full(segment, tmp_path, shippers):
    paths, seqs = alike_files(tmp_path)
    proc = shippers("tail", str(tmp_path / "node-*.json"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= len(seqs), timeout=15)
    gen.write_records(paths[1], [600])  # the second of a pair keeps growing and is followed
    segment.wait_for(lambda: len(segment.messages) >= len(seqs) + 1, timeout=15)
    proc.stop()
    # a restart resumes each at its own checkpoint
    gen.write_records(paths[0], [601])
    gen.write_records(paths[3], [602])
    proc = shippers("tail", str(tmp_path / "node-*.json"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= len(seqs) + 3, timeout=15)
    time.sleep(0.3)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, seqs + [600, 601, 602])


def test_checkpoints_written_before_this_change_are_honoured(segment, tmp_path):
    """Upgrade: the checkpoint file an earlier version wrote (key: "f" + blake2b-8 of the first line; tail:
    blake2b-8 of the 64 bytes before the offset) resumes where it says, nothing is resent."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    data = log.read_bytes()
    offset = len(data)
    first_line = data[: data.index(b"\n") + 1]
    key = "f" + hashlib.blake2b(first_line, digest_size=8).hexdigest()
    tail = hashlib.blake2b(data[offset - 64 : offset], digest_size=8).hexdigest()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "checkpoints-segment.json").write_bytes(orjson.dumps(
        {"version": 1, "files": {key: {"offset": offset, "path": str(log), "tail": tail, "updated": 1.0}}}
    ))  # fmt: skip
    gen.write_records(log, range(100, 120))
    result = ship("backfill", str(log), *ship_args(segment, tmp_path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(segment, range(100, 120))


# -- rotation -----------------------------------------------------------------------------------------------------


def test_copytruncate_under_fast_rotation_with_the_copies_matched_loses_and_resends_nothing(
    segment, tmp_path, shippers
):
    log = tmp_path / "kong.json"
    gen.write_records(log, [0])
    proc = shippers("tail", str(tmp_path / "kong.json*"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 1, timeout=15)
    total = 6000
    writer = gen.Writer(log, range(1, total), rate=3000.0)
    writer.start()
    rotations = 0
    while not writer.done.is_set() and rotations < 12:
        time.sleep(0.12)  # faster than kong-ship's poll of new files at times: copies found before the truncate
        with writer.pause:  # logrotate copytruncate: older copies shift up, copy, truncate
            for n in range(rotations, 0, -1):
                os.rename(tmp_path / f"kong.json.{n}", tmp_path / f"kong.json.{n + 1}")
            shutil.copy(log, tmp_path / "kong.json.1")
            with open(log, "r+b") as handle:
                handle.truncate(0)
        rotations += 1
    writer.done.wait(30)
    segment.wait_for(lambda: len(counts(segment)) >= total, timeout=30)
    time.sleep(0.5)  # a late resend would show now
    code, _, err = proc.stop()
    assert code == 0, err
    assert rotations >= 8
    got = counts(segment)
    missing = sorted(set(range(total)) - set(got))
    doubled = sum(n - 1 for n in got.values())
    print(f"copytruncate: {rotations} rotations, {total} records, {len(missing)} lost, {doubled} resent")
    assert not missing, missing[:10]
    assert doubled == 0  # the bound the README documents: none while kong-ship runs


def test_rotations_while_kong_ship_is_stopped_resume_where_it_was(segment, tmp_path, shippers):
    """Rename, copytruncate and compression each happen while kong-ship is down; after each restart every file
    continues at its checkpoint (confirmed by the bytes before it), whatever its new name or inode."""
    log = tmp_path / "kong.json"
    pattern = str(tmp_path / "kong.json*")

    def run_until(n: int) -> None:
        proc = shippers("tail", pattern, *ship_args(segment, tmp_path, follow=True), env=ENV)
        segment.wait_for(lambda: len(segment.messages) >= n, timeout=15)
        time.sleep(0.3)  # a resend would show now
        code, _, err = proc.stop()
        assert code == 0, err

    gen.write_records(log, range(100))
    run_until(100)
    gen.write_records(log, range(100, 120))
    os.rename(log, tmp_path / "kong.json.1")  # rename rotation
    gen.write_records(log, range(120, 140))
    run_until(140)
    gen.write_records(log, range(140, 160))
    shutil.copy(log, tmp_path / "kong.json.0")  # copytruncate
    with open(log, "r+b") as handle:
        handle.truncate(0)
    gen.write_records(log, range(160, 180))
    packed = tmp_path / "kong.json.1.gz"  # and the older rotation compressed
    packed.write_bytes(gzip.compress((tmp_path / "kong.json.1").read_bytes()))
    os.unlink(tmp_path / "kong.json.1")
    run_until(180)
    assert_exactly_once(segment, range(180))


def test_gzip_rotation_under_the_glob_is_not_resent(segment, tmp_path, shippers):
    """logrotate with compress: kong.json → kong.json.1, a new kong.json, then kong.json.1.gz is written next to
    kong.json.1 (a new inode, the same bytes) and kong.json.1 deleted."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(200))
    proc = shippers("tail", str(tmp_path / "kong.json*"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 200, timeout=15)
    os.rename(log, tmp_path / "kong.json.1")
    gen.write_records(log, range(200, 300))
    time.sleep(0.3)
    (tmp_path / "kong.json.1.gz").write_bytes(gzip.compress((tmp_path / "kong.json.1").read_bytes()))
    time.sleep(0.3)  # both exist for a while, as while gzip runs
    os.unlink(tmp_path / "kong.json.1")
    gen.write_records(log, range(300, 350))
    segment.wait_for(lambda: len(segment.messages) >= 350, timeout=15)
    time.sleep(1.0)  # the old file is let go (--rotate-wait 0.3) and the archive looked at
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(350))


LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)


def logrotate_config(tmp_path: pathlib.Path) -> pathlib.Path:
    """The shipped example (examples/logrotate/kong) pointed at the test's directory."""
    text = (ROOT / "examples" / "logrotate" / "kong").read_text()
    assert "/var/log/kong/kong.json {" in text and "\n    nocreate\n" in text
    text = text.replace("/var/log/kong/kong.json {", f"{tmp_path}/kong.json {{")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    return conf


@pytest.mark.skipif(LOGROTATE is None, reason="the logrotate binary is not installed (apt-get install logrotate)")
def test_real_logrotate_with_the_example_config_beside_a_reopening_writer(segment, tmp_path, shippers):
    log = tmp_path / "kong.json"
    gen.write_records(log, [0])
    conf = logrotate_config(tmp_path)
    proc = shippers("tail", str(tmp_path / "kong.json*"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 1, timeout=15)
    total = 3000
    writer = gen.Writer(log, range(1, total), rate=4000.0)
    writer.start()
    for _ in range(4):  # the 2nd rotation on compresses kong.json.2 next to kong.json.2 (delaycompress)
        time.sleep(0.15)
        run = subprocess.run([LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
                             capture_output=True, timeout=30)  # fmt: skip
        assert run.returncode == 0, run.stderr
    writer.done.wait(30)
    segment.wait_for(lambda: len(counts(segment)) >= total, timeout=30)
    time.sleep(0.5)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(total))
    assert list(tmp_path.glob("kong.json.*.gz"))  # compressed rotations were there, and not resent


def test_a_file_logrotate_renamed_to_backup_is_read(segment, tmp_path, shippers):
    """logrotate's `create` racing a writer that reopens (what the real logrotate does, step by step, when the
    writer re-creates kong.json between logrotate's rename and its create): the writer's fresh file is renamed to
    kong.json-<date>.backup and an empty kong.json created. The README's glob matches the backup: read in full."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(100))
    proc = shippers("tail", str(tmp_path / "kong.json*"), *ship_args(segment, tmp_path, follow=True), env=ENV)
    segment.wait_for(lambda: len(segment.messages) >= 100, timeout=15)
    os.rename(log, tmp_path / "kong.json.1")  # logrotate: rename
    gen.write_records(log, range(100, 110))  # the writer (reopen: true) creates kong.json and writes
    os.rename(log, tmp_path / "kong.json-2026120112.backup")  # logrotate: "destination already exists, renaming"
    log.touch()  # logrotate: create
    gen.write_records(log, range(110, 150))
    segment.wait_for(lambda: len(segment.messages) >= 150, timeout=15)
    time.sleep(0.5)
    code, _, err = proc.stop()
    assert code == 0, err
    assert_exactly_once(segment, range(150))


@pytest.mark.parametrize("command", ["parse", "backfill"])
def test_a_gzip_file_cut_short_before_its_first_line_is_named_and_the_exit_is_1(segment, tmp_path, command):
    """A compressed rotation cut short (a copy interrupted) that fails before its first line is complete: it was
    said in the log, the rest was shipped, and the exit code was 0 (the README says 1 for an input not read)."""
    good = tmp_path / "good.json"
    gen.write_records(good, range(20))
    whole = gzip.compress(b"".join(gen.kong_line(gen.kong_record(seq)) for seq in range(1000, 1003)))
    cut = tmp_path / "cut.json.1.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    args = [str(good), str(cut)] + (ship_args(segment, tmp_path) if command == "backfill" else [])
    result = subprocess.run([sys.executable, "-m", "shipper", command, *args], capture_output=True, env=ENV,
                            timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert [line for line in result.stderr.decode().splitlines() if str(cut) in line], result.stderr
    if command == "backfill":
        assert_exactly_once(segment, range(20))
    else:
        assert sorted(int(orjson.loads(line)["query"]["seq"]) for line in result.stdout.splitlines()) == list(range(20))
