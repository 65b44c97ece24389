"""`tail --ignore-older SECONDS` (and `[input] ignore_older`), as a real process against the strict fake Segment
(tests/tailrun.py): a file found with no checkpoint and last modified longer ago than that starts at its end (its
history was shipped before kong-ship, by a Kong plugin), a `.gz` one too; what is appended later ships, a
checkpoint wins, and the position saved is the end at discovery. Every record has its own seq; each
test checks the exact set that arrived."""

from __future__ import annotations

import gzip
import os
import time

import orjson

import gen
from conftest import ship, ship_env, summary_rows, wait_until
from tailrun import ENV, arrived, exactly_once

DAYS_3 = 3 * 86400


def age(path, seconds: float) -> None:
    """Last modified `seconds` ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def gz(path, seqs) -> None:
    with gzip.open(path, "wb") as handle:
        for seq in seqs:
            handle.write(gen.kong_line(gen.kong_record(seq)))


def said(err: str, path) -> list[str]:
    """kong-ship's own log lines that name `path` as not read for its age."""
    return [line for line in err.splitlines() if f"{path}:" in line and "--ignore-older" in line]


def status(state) -> dict[str, dict]:
    result = ship("status", "--state-dir", str(state), "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    return {row["file"]: row for row in orjson.loads(result.stdout)["files"]}


def test_a_first_start_skips_old_rotations_and_ships_what_is_appended_to_them(segment, tmp_path, tails):
    log, rotated, packed = tmp_path / "kong.json", tmp_path / "kong.json.1", tmp_path / "kong.json.2.gz"
    gen.write_records(log, range(5))
    gen.write_records(rotated, range(100, 105))
    gz(packed, range(200, 205))
    age(rotated, DAYS_3)
    age(packed, DAYS_3 + 86400)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--ignore-older", "86400")
    arrived(segment, 5)
    # Appended to the old file after its discovery: shipped (and the fresh file goes on as usual).
    gen.write_records(rotated, [105])
    gen.write_records(log, [5])
    arrived(segment, 7)
    err = tail.stop()
    exactly_once(segment, [*range(6), 105])
    # One line per file so started, naming it and its age; none for the fresh file.
    assert len(said(err, rotated)) == 1 and "3.0 days" in said(err, rotated)[0], err
    assert len(said(err, packed)) == 1 and "4.0 days" in said(err, packed)[0], err
    assert not said(err, log), err
    # The lines never read are not counted: read = shipped = 7.
    row = summary_rows(err)["segment"]
    assert row["read"] == row["shipped"] == 7, row
    # The old files' checkpoints are their ends (the .gz's: its decompressed length).
    rows = status(tmp_path / "state")
    assert rows[str(rotated)]["checkpoint"] == os.path.getsize(rotated) and rows[str(rotated)]["lag"] == 0, rows
    assert rows[str(packed)]["checkpoint"] == len(gzip.decompress(packed.read_bytes())), rows
    assert rows[str(log)]["lag"] == 0, rows

    # A restart without the option, the old files old again: their checkpoints win, nothing old is read again (the
    # .gz neither); new lines ship.
    age(rotated, DAYS_3)
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    gen.write_records(log, [6])
    arrived(segment, 8)
    gen.write_records(rotated, [106])
    arrived(segment, 9)
    err = tail.stop()
    exactly_once(segment, [*range(7), 105, 106])
    assert not said(err, rotated) and not said(err, packed), err


def test_the_position_saved_is_the_end_at_discovery(segment, tmp_path, tails):
    """Run 1 (the key in the config file) starts the old file at its end and reads nothing of it; run 2, without
    the option, resumes at that checkpoint: only what was appended in between ships."""
    log, rotated = tmp_path / "kong.json", tmp_path / "kong.json.1"
    gen.write_records(log, range(5))
    gen.write_records(rotated, range(100, 110))
    age(rotated, DAYS_3)
    config = tmp_path / "kong-ship.toml"
    config.write_text("[input]\nignore_older = 3600\n")
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--config", str(config))
    arrived(segment, 5)
    err = tail.stop()
    exactly_once(segment, range(5))
    assert len(said(err, rotated)) == 1, err
    assert status(tmp_path / "state")[str(rotated)]["checkpoint"] == os.path.getsize(rotated)

    gen.write_records(rotated, [110])
    gen.write_records(log, [5])
    tail = tails(tmp_path, segment, tmp_path / "kong.json*")
    arrived(segment, 7)
    tail.stop()
    exactly_once(segment, [*range(6), 110])


def test_a_checkpointed_old_file_resumes_at_its_checkpoint(segment, tmp_path, tails):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    tail = tails(tmp_path, segment, log)
    arrived(segment, 5)
    tail.stop()
    gen.write_records(log, range(5, 10))  # written while stopped, long ago
    age(log, DAYS_3)
    tail = tails(tmp_path, segment, log, "--ignore-older", "3600")
    arrived(segment, 10)
    err = tail.stop()
    exactly_once(segment, range(10))
    assert not said(err, log), err


def test_files_found_while_running(segment, tmp_path, tails):
    """An old file moved in under the glob starts at its end (an old .gz too); a file created meanwhile
    (fresh, as rotation makes them) is read from its start."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    tail = tails(tmp_path, segment, tmp_path / "kong.json*", "--ignore-older", "3600")
    arrived(segment, 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gen.write_records(elsewhere / "old", range(100, 110))
    gz(elsewhere / "old.gz", range(200, 210))
    age(elsewhere / "old", DAYS_3)
    age(elsewhere / "old.gz", DAYS_3)
    os.rename(elsewhere / "old", tmp_path / "kong.json-old")
    os.rename(elsewhere / "old.gz", tmp_path / "kong.json-old.gz")
    gen.write_records(tmp_path / "kong.json-new", range(300, 305))
    arrived(segment, 8)
    # Appended once it was found (before, the line would make the file fresh: read from its start).
    assert wait_until(lambda: said(tail.stderr(), tmp_path / "kong.json-old"), timeout=20), tail.stderr()
    gen.write_records(tmp_path / "kong.json-old", [110])
    arrived(segment, 9)
    err = tail.stop()
    exactly_once(segment, [*range(3), *range(300, 305), 110])
    assert len(said(err, tmp_path / "kong.json-old")) == 1, err
    assert len(said(err, tmp_path / "kong.json-old.gz")) == 1, err


def test_bad_values_are_one_line_and_exit_2(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(1))
    common = [str(log), "--sink", "stdout", "--state-dir", str(tmp_path / "state")]
    env = ship_env()

    def one_line(*args: str) -> str:
        result = ship(*args, env=env, timeout=30)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        return lines[0]

    for value, reason in (("-1", "not in the range"), ("abc", "not a valid float"), ("1e308", "not in the range"),
                          ("nan", "not a finite number"), ("0", "not in the range")):
        line = one_line("tail", *common, "--ignore-older", value)
        assert "--ignore-older" in line and reason in line, line
    config = tmp_path / "kong-ship.toml"
    for text, reason in (('"abc"', "expected a number"), ("1e308", "not in the range")):
        config.write_text(f"[input]\nignore_older = {text}\n")
        line = one_line("tail", *common, "--config", str(config))
        assert "input.ignore_older" in line and reason in line, line
    # A year at most, like every duration; a good value, from the flag or the file, is taken as seconds.
    config.write_text("[input]\nignore_older = 86400\n")
    for extra in (["--ignore-older", "31536000"], ["--config", str(config)]):
        result = ship("check-config", *common, *extra, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"ignore_older = " + (b"31536000.0" if extra[0] == "--ignore-older" else b"86400.0") in result.stdout
