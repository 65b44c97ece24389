"""kong-ship as a Unix tool, judged as a platform engineer judges Vector, Fluent Bit or Filebeat: every wrong flag
or value on every command is one line and exit 2; a blank credential is a missing one; inputs that are not log
files are named and the rest is read; `parse | head` ends quietly; SIGINT/SIGTERM end a run at once with the
codes a shell expects and lose nothing; --help and --version work in any locale and with no usable home; a
configuration file that is a directory, not TOML or a pipe is handled. Real processes, real files, real signals.
(Timings are measured and reported by hand, never asserted here.)"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

import gen
from conftest import ship, ship_env

import shipper

Case = tuple[tuple[str, ...], str]  # the arguments, and a word the one error line must hold


def one_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one line a run said on stderr, asserting its exit code and that it said one line, no traceback."""
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in lines[0], (result.returncode,
                                                                                            lines[-5:])
    return lines[0]


def _one_error_line(code: object, stdout: str | bytes, stderr: str | bytes) -> str | None:
    """The reason a run is not a usage error as a Unix tool gives one (exit 2, nothing on stdout, one
    `kong-ship: error:` line on stderr), or None when it is."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    if code != 2:
        return f"exit {code}: {lines[-5:]}"
    if stdout:
        return f"stdout: {stdout[:200]!r}"
    if len(lines) != 1 or not lines[0].startswith("kong-ship: error: ") or "Traceback" in lines[0]:
        return f"stderr: {lines[-5:]}"
    return None


# Runs kong-ship's own `main` (what `python -m shipper` and the console script run) once per case, in one
# process: dozens of usage errors in the time of one start. Each case's stdout and stderr are captured, its
# exit code is the SystemExit's; anything else escaping `main` is a traceback the user would have seen.
RUN_EACH = """
import contextlib, io, json, os, sys, traceback
from shipper.cli import main
cases, base = json.load(sys.stdin), dict(os.environ)
results = []
for case in cases:
    os.environ.clear()
    os.environ.update(base, **case["env"])
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) for _ in range(2))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(case["args"])
            code = None
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc(file=err)
            code = "traceback"
    results.append({"code": code, "stdout": out.buffer.getvalue().decode(), "stderr": err.buffer.getvalue().decode()})
json.dump(results, sys.__stdout__)
"""


def _all_usage_errors(cases: list[Case], env: dict[str, str] | None = None) -> None:
    """Lists every case that is not a one-line usage error holding its word."""
    payload = orjson.dumps([{"args": list(args), "env": env or {}} for args, _ in cases])
    child = subprocess.run([sys.executable, "-c", RUN_EACH], input=payload, capture_output=True, env=ship_env(),
                           timeout=120)  # fmt: skip
    assert child.returncode == 0, child.stderr.decode()
    failures = []
    for (args, word), result in zip(cases, orjson.loads(child.stdout), strict=True):
        wrong = _one_error_line(result["code"], result["stdout"], result["stderr"])
        if wrong is None and word not in result["stderr"]:
            wrong = f"does not say {word!r}: {result['stderr'].strip()}"
        if wrong:
            failures.append(f"{' '.join(args)}: {wrong}")
    assert not failures, "\n".join(failures)


def test_usage_errors_are_the_same_from_python_m_shipper(tmp_path):
    """The in-process runs above stand for real starts: a few of their cases, as `python -m shipper`."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    for args, word in [
        (("backfill", str(log), "--sink", "stdout", "--queue-size", "-5"), "--queue-size"),
        (("bakfill", str(log)), "backfill"),
        (("receive", "--sink", "kafka"), "kafka"),
    ]:
        result = ship(*args)
        assert _one_error_line(result.returncode, result.stdout, result.stderr) is None, result.stderr
        assert word in result.stderr.decode()
    blank = ship("backfill", str(log), "--sink", "segment", "--state-dir", str(tmp_path / "s"),
                 env=ship_env(SEGMENT_WRITE_KEY=" "))  # fmt: skip
    assert _one_error_line(blank.returncode, blank.stdout, blank.stderr) is None, blank.stderr
    assert "SEGMENT_WRITE_KEY" in blank.stderr.decode()


# -- wrong flags and values, every command ---------------------------------------------------------------------
def test_a_wrong_value_on_any_command_is_one_line_naming_the_option_and_exit_2(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    state = ("--state-dir", str(tmp_path / "state"))
    backfill = ("backfill", str(log), "--sink", "stdout", *state)
    receive = ("receive", "--sink", "stdout", *state)
    audit_tail = ("audit", "tail", "--sink", "stdout", "--once", *state)
    cases: list[Case] = [
        # negative, zero, not a number, too big: each option's own range
        ((*backfill, "--flush-interval", "-1"), "--flush-interval"),
        ((*backfill, "--flush-interval", "0"), "--flush-interval"),
        ((*backfill, "--queue-size", "0"), "--queue-size"),
        ((*backfill, "--queue-size", "-5"), "--queue-size"),
        ((*backfill, "--concurrency", "0"), "--concurrency"),
        ((*backfill, "--concurrency", "65"), "--concurrency"),
        ((*backfill, "--timeout", "soon"), "--timeout"),
        ((*backfill, "--shutdown-timeout", "-1"), "--shutdown-timeout"),
        ((*backfill, "--retry-max-delay", "-0.5"), "--retry-max-delay"),
        ((*backfill, "--max-rate", "0"), "--max-rate"),
        ((*backfill, "--max-line-bytes", "1023"), "--max-line-bytes"),
        ((*backfill, "--sample-rate", "2"), "--sample-rate"),
        ((*backfill, "--sample-rate", "-1"), "--sample-rate"),
        ((*backfill, "--workers", "-1"), "--workers"),
        ((*backfill, "--workers", "9999"), "--workers"),
        ((*backfill, "--metrics-addr", "127.0.0.1:99999"), "--metrics-addr"),
        ((*backfill, "--endpoint", "ftp://example.com"), "--endpoint"),
        ((*backfill, "--endpoint", "http://"), "no host"),  # else retried forever: `Name or service not known`
        ((*backfill, "--endpoint", "segment=https://:443"), "no host"),
        ((*backfill, "--endpoint", "http://127.0.0.1:99999"), "--endpoint"),
        ((*backfill, "--exclude-status", "abc"), "--exclude-status"),
        ((*backfill, "--dead-letter", str(tmp_path)), "--dead-letter"),
        ((*backfill, "--ca-file", str(tmp_path / "no-such.pem")), "--ca-file"),
        ((*backfill, "--log-level", "loud"), "--log-level"),
        (("parse", str(log), "--max-line-bytes", "-1"), "--max-line-bytes"),
        (("parse", str(log), "--max-line-bytes", "many"), "--max-line-bytes"),
        (("parse", str(log), "--format", "xml"), "--format"),
        (("parse", str(log), "--until", "tomorrow"), "--until"),
        (("tail", str(log), "--sink", "stdout", *state, "--poll-interval", "0"), "--poll-interval"),
        (("tail", str(log), "--sink", "stdout", *state, "--start-at", "middle"), "--start-at"),
        (("tail", str(log), "--sink", "stdout", *state, "--rotate-wait", "-1"), "--rotate-wait"),
        ((*receive, "--max-body-bytes", "0"), "--max-body-bytes"),
        ((*receive, "--max-connections", "0"), "--max-connections"),
        ((*receive, "--read-timeout", "abc"), "--read-timeout"),
        ((*receive, "--listen", "127.0.0.1:99999"), "--listen"),
        ((*receive, "--listen-tcp", "no-port"), "--listen-tcp"),
        ((*audit_tail, "--page-size", "1001"), "--page-size"),
        ((*audit_tail, "--interval", "0"), "--interval"),
        (("audit", "verify", "--timeout", "0"), "--timeout"),
        (("tap", "--rate", "-1"), "--rate"),
        (("tap", "--address", "nohost"), "--address nohost"),  # tap's flag, not the shipper's --metrics-addr
        (("init", "--print", "nonsense"), "--print"),
        (("status", "--state-dir", str(log)), "--state-dir"),
        # an unknown sink, everywhere a sink is named
        (("tail", str(log), "--sink", "nowhere", *state), "nowhere"),
        ((*receive, "--sink", "kafka"), "kafka"),
        (("audit", "tail", "--sink", "nowhere", *state), "nowhere"),
        (("backfill", str(log), "--sink", "", *state), "--sink"),
        # a flag the command does not have, on every command
        *[((*command, "--no-such-flag"), "--no-such-flag") for command in (
            ("tail", str(log)), ("backfill", str(log)), ("parse", str(log)), ("check-config", str(log)),
            ("status",), ("init",), ("receive",), ("tap",), ("audit", "tail"), ("audit", "verify"))],
        (("parse", str(log), "--sink", "stdout"), "--sink"),  # parse sends nothing: no --sink
        (("--no-such-flag",), "--no-such-flag"),
        (("nosuchcommand",), "nosuchcommand"),
        (("bakfill", str(log)), "backfill"),  # the typo's suggestion
        (("audit", "nosuchcommand"), "nosuchcommand"),
    ]
    _all_usage_errors(cases)


def test_a_value_that_is_not_a_finite_number_is_a_usage_error(tmp_path):
    """click's FloatRange takes `inf` (above any minimum) and `nan` (no comparison holds); they surfaced deep in
    the run: int(inf) in the rate limiter (a traceback), a timer out of range (a dead thread), a poll that never
    fires (nothing shipped, not a word). Every float option of every command, from a flag or from the file."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    state = ("--state-dir", str(tmp_path / "state"))
    backfill = ("backfill", str(log), "--sink", "stdout", *state)
    tail = ("tail", str(log), "--sink", "stdout", *state)
    max_rate = tmp_path / "max_rate.toml"
    max_rate.write_text("[delivery]\nmax_rate = inf\n")  # TOML has inf and nan literals
    sample_rate = tmp_path / "sample_rate.toml"
    sample_rate.write_text("[sampling]\nrate = nan\n")
    cases: list[Case] = [
        *[((*backfill, flag, value), flag) for flag, value in (
            ("--max-rate", "inf"), ("--max-rate", "nan"), ("--max-rate", "1e400"), ("--sample-rate", "nan"),
            ("--flush-interval", "inf"), ("--flush-interval", "nan"), ("--timeout", "nan"),
            ("--shutdown-timeout", "inf"), ("--retry-initial-delay", "nan"), ("--retry-max-delay", "inf"))],
        ((*tail, "--poll-interval", "nan"), "--poll-interval"),
        ((*tail, "--rotate-wait", "inf"), "--rotate-wait"),
        (("receive", "--sink", "stdout", *state, "--read-timeout", "nan"), "--read-timeout"),
        (("audit", "tail", "--sink", "stdout", "--once", *state, "--interval", "nan"), "--interval"),
        (("audit", "verify", "--timeout", "inf"), "--timeout"),
        (("tap", "--rate", "nan"), "--rate"),
        (("tap", "--rate", "inf"), "--rate"),
        ((*backfill, "--config", str(max_rate)), "max_rate"),
        ((*backfill, "--config", str(sample_rate)), "sampling.rate"),
    ]  # fmt: skip
    _all_usage_errors(cases)


def test_a_duration_past_a_year_is_a_usage_error(tmp_path):
    """A finite duration too long for Python's waits and socket timeouts (~292 years) surfaced deep in the run: `tail
    --poll-interval 1e308` or `--flush-interval 1e308` ended in a dead thread (exit 1, OverflowError), a timeout in
    a socket's. Any duration past a year is refused as it is read, from a flag or the file alike."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    state = ("--state-dir", str(tmp_path / "state"))
    tail = ("tail", str(log), "--sink", "stdout", *state)
    in_file = tmp_path / "timeout.toml"
    in_file.write_text("[delivery]\ntimeout = 1e308\n")
    cases: list[Case] = [
        *[((*tail, flag, value), flag) for flag, value in (
            ("--poll-interval", "1e308"), ("--flush-interval", "1e308"), ("--rotate-wait", "1e12"),
            ("--timeout", "1e10"), ("--shutdown-timeout", "1e308"), ("--retry-initial-delay", "1e308"),
            ("--retry-max-delay", "1e308"), ("--give-up-after", "1e308"))],
        (("backfill", str(log), "--sink", "moesif", *state, "--moesif-connect-timeout", "10" * 15),
         "--moesif-connect-timeout"),
        (("backfill", str(log), "--sink", "runscope", *state, "--runscope-timeout", "10" * 15), "--runscope-timeout"),
        (("receive", "--sink", "stdout", *state, "--read-timeout", "1e12"), "--read-timeout"),
        (("audit", "tail", "--sink", "stdout", "--once", *state, "--interval", "1e12"), "--interval"),
        (("audit", "verify", "--timeout", "1e12"), "--timeout"),
        ((*tail, "--config", str(in_file)), "timeout"),
    ]  # fmt: skip
    _all_usage_errors(cases, env={"MOESIF_APPLICATION_ID": "app", "RUNSCOPE_TOKEN": "token"})


def test_every_duration_option_is_bounded():
    """The cases above stand for every duration: one declared later without the bound would take 1e308 again."""
    import click

    from shipper.cli import cli
    from shipper.commands.options import Seconds
    from shipper.settings import MAX_MILLISECONDS

    def unbounded(command: click.Command, path: str) -> list[str]:
        found = []
        for p in command.params:
            if not any(word in (p.name or "") for word in ("timeout", "interval", "delay", "wait", "after")):
                continue
            milliseconds = isinstance(p.type, click.IntRange) and p.type.max is not None and p.type.max <= MAX_MILLISECONDS
            if not (isinstance(p.type, Seconds) or milliseconds):
                found.append(f"{path} {p.name}: {p.type!r}")
        for name, sub in getattr(command, "commands", {}).items():
            found += unbounded(sub, f"{path} {name}")
        return found

    assert not unbounded(cli, "kong-ship")


def test_every_float_option_refuses_numbers_that_are_not_finite():
    """The cases above stand for every float option: one declared later with click's own FloatRange (or a bare
    float) would take `inf` and `nan` again."""
    import click

    from shipper.cli import cli
    from shipper.commands.options import FiniteFloatRange

    def floats(command: click.Command, path: str) -> list[str]:
        found = [f"{path} {p.name}: {type(p.type).__name__}" for p in command.params
                 if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, FiniteFloatRange)]
        for name, sub in getattr(command, "commands", {}).items():
            found += floats(sub, f"{path} {name}")
        return found

    assert not floats(cli, "kong-ship")


def test_a_sampling_rate_that_is_not_a_rate_is_a_config_error_not_a_traceback():
    """The options' types refuse it first; built another way (a route's settings, a caller), the processor still
    says it as a usage error, never a ValueError escaping `main`."""
    from shipper.errors import ConfigError
    from shipper.processors.sampling import Sampling

    for rate in (float("nan"), 1.5, -0.1):
        with pytest.raises(ConfigError, match="sample rate"):
            Sampling(rate)


def test_a_blank_credential_variable_is_a_missing_one(tmp_path):
    """`export SEGMENT_WRITE_KEY=` (or a value of spaces, a stray newline from `$(cat file)`) is not a key: exit 2
    naming the variable, before anything is read or sent."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    for blank in ("", "  ", "\t\n"):
        env = {"SEGMENT_WRITE_KEY": blank, "MOESIF_APPLICATION_ID": blank, "RUNSCOPE_ACCESS_TOKEN": blank,
               "RUNSCOPE_BUCKET_KEY": "bucket"}  # fmt: skip
        cases: list[Case] = [
            (("backfill", str(log), "--sink", sink, "--endpoint", "http://127.0.0.1:9", "--state-dir",
              str(tmp_path / sink)), variable)
            for sink, variable in (("segment", "SEGMENT_WRITE_KEY"), ("moesif", "MOESIF_APPLICATION_ID"),
                                   ("runscope", "RUNSCOPE_ACCESS_TOKEN"))
        ]  # fmt: skip
        cases.append((("tail", str(log), "--sink", "segment", "--state-dir", str(tmp_path / "t")),
                      "SEGMENT_WRITE_KEY"))  # fmt: skip
        _all_usage_errors(cases, env=env)
        # the bucket is a credential too: a blank one went into the URL (`/buckets/  /messages`), retried forever
        bucket = (("backfill", str(log), "--sink", "runscope", "--endpoint", "http://127.0.0.1:9", "--state-dir",
                   str(tmp_path / "bucket")), "RUNSCOPE_BUCKET_KEY")  # fmt: skip
        _all_usage_errors([bucket], env={"RUNSCOPE_ACCESS_TOKEN": "token", "RUNSCOPE_BUCKET_KEY": blank})


# -- inputs ------------------------------------------------------------------------------------------------------
def test_an_empty_file_is_read_quietly_and_is_not_an_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    parsed = ship("parse", str(empty))
    assert (parsed.returncode, parsed.stdout, parsed.stderr) == (0, b"", b"")
    shipped = ship("backfill", str(empty), "--sink", "stdout", "--state-dir", str(tmp_path / "s"))
    assert shipped.returncode == 0 and shipped.stdout == b"", shipped.stderr
    assert "Traceback" not in shipped.stderr.decode()


@pytest.mark.parametrize("command", ["parse", "backfill"])
def test_a_device_given_as_a_log_is_named_the_rest_is_read_and_the_exit_is_1(tmp_path, command):
    """/dev/null (or /dev/zero, which would never end) among the inputs: named as a device, never read, and the
    log beside it read in full."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(5))
    more = ["--sink", "stdout", "--state-dir", str(tmp_path / "s")] if command == "backfill" else []
    result = ship(command, "/dev/zero", str(log), *more, timeout=30)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert [line for line in err.splitlines() if "/dev/zero" in line] == [
        "kong-ship: error: /dev/zero: is a device, not a regular file (not read)"
    ], err
    assert "Traceback" not in err
    printed = [orjson.loads(line) for line in result.stdout.splitlines()]
    seqs = [int(p["query"]["seq"]) for p in printed] if command == "parse" else [gen.seq_of_segment_message(p) for p in printed]
    assert sorted(seqs) == list(range(5))


def test_parse_reads_standard_input_redirected_from_a_file_as_dev_stdin(tmp_path):
    """`kong-ship parse /dev/stdin < access.log`: a redirected file is a regular file, read like any other."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(7))
    with open(log, "rb") as stdin:
        result = subprocess.run([sys.executable, "-m", "shipper", "parse", "/dev/stdin"], stdin=stdin,
                                capture_output=True, env=ship_env(), timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert sorted(int(orjson.loads(line)["query"]["seq"]) for line in result.stdout.splitlines()) == list(range(7))


def test_parse_and_backfill_need_no_standard_input(tmp_path):
    """Started with descriptor 0 closed (`<&-`, some supervisors): nothing reads it, nothing fails."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(4))
    for command in (["parse"], ["backfill", "--sink", "stdout", "--state-dir", str(tmp_path / "s")]):
        result = subprocess.run([sys.executable, "-m", "shipper", command[0], str(log), *command[1:]],
                                capture_output=True, env=ship_env(), timeout=60, preexec_fn=lambda: os.close(0))  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert len(result.stdout.splitlines()) == 4 and "Traceback" not in result.stderr.decode()


def test_an_interrupted_backfill_counts_the_megabytes_it_read(tmp_path):
    """A file read as blocks (the workers' path) counted its bytes only once read to its end: a run stopped
    part-way through one big file said `0.0 MB/s`."""
    log = tmp_path / "kong.json"
    _many_lines(log, 10_000)  # ~20 MB: interrupted long before its end (stdout, a pipe, is not read)
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout",
                             "--state-dir", str(tmp_path / "s"), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ship_env())  # fmt: skip
    assert proc.stdout is not None
    try:
        proc.stdout.readline()  # shipping: the first blocks are read
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 130 and "interrupted" in text, text
    rate = [line for line in text.splitlines() if line.startswith("elapsed")]
    assert rate and not rate[0].endswith(" 0.0 MB/s"), text


# -- output ------------------------------------------------------------------------------------------------------
def _many_lines(path, count: int) -> None:
    """`count` records (the same few hundred seqs over and over: fast to write, long to parse)."""
    gen.write_records(path, range(200))
    block = path.read_bytes()
    with open(path, "ab") as handle:
        for _ in range(count // 200 - 1):
            handle.write(block)


def _into_dev_full(*args: str, **env: str) -> subprocess.CompletedProcess:
    """kong-ship with standard output on /dev/full: every write fails with ENOSPC, as on a full disk."""
    with open("/dev/full", "wb") as full:
        return subprocess.run([sys.executable, "-m", "shipper", *args], stdout=full, stderr=subprocess.PIPE,
                              env=ship_env(**env), timeout=60)  # fmt: skip


def test_output_onto_a_full_disk_is_one_line_exit_1_and_moves_no_checkpoint(tmp_path):
    """`> /dev/full` (a full disk, a quota, EIO): one `fatal: cannot write to standard output` line and exit 1,
    as `ls --version > /dev/full` does; not a traceback (parse) nor a dead sender thread (--sink stdout,
    --dry-run). A run that printed nothing moved no checkpoint: its rerun prints everything."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    big = tmp_path / "big.json"
    _many_lines(big, 2000)  # more than a buffer: the failure comes at a write, not only at the last flush
    state = tmp_path / "state"
    runs = [("parse", str(log)), ("parse", str(big)),
            ("backfill", str(log), "--sink", "stdout", "--state-dir", str(state)),
            ("backfill", str(big), "--sink", "stdout", "--state-dir", str(state), "--concurrency", "4"),
            ("backfill", str(log), "--sink", "segment", "--dry-run", "--state-dir", str(state))]  # fmt: skip
    for args in runs:
        result = _into_dev_full(*args, SEGMENT_WRITE_KEY="key")
        line = one_error(result, code=1)
        assert line == "kong-ship: fatal: cannot write to standard output: No space left on device", args
    rerun = ship("backfill", str(log), "--sink", "stdout", "--state-dir", str(state))
    assert rerun.returncode == 0 and len(rerun.stdout.splitlines()) == 3, rerun.stderr.decode()


def test_parse_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`kong-ship parse big.log | head -1`: no traceback, no "Exception ignored", no message at all (as `cat`);
    the exit status is not 0 (the output was not all written)."""
    log = tmp_path / "kong.json"
    _many_lines(log, 6000)  # ~12 MB of output: far more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "parse", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ship_env())  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert "seq" in orjson.loads(proc.stdout.readline())["query"]
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert err == "", err


# -- signals -----------------------------------------------------------------------------------------------------
def _drain(stream, into: bytearray) -> threading.Thread:
    def read() -> None:
        while chunk := stream.read1(65536):
            into.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def _signal_once_printing(proc: subprocess.Popen, signum: int) -> tuple[bytearray, str, int, float]:
    """Once `proc` has printed its first line, `signum` to it: (all it printed, its stderr, its exit code, the
    seconds from the signal to its end). Killed if it outlives the test."""
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    try:
        out.extend(proc.stdout.readline())  # it has started printing
        reader = _drain(proc.stdout, out)
        proc.send_signal(signum)
        sent = time.monotonic()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return out, err, code, took


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_parse_at_once_with_whole_lines_and_no_traceback(tmp_path, signum):
    """Ctrl-C: exit 130 and not a word (no KeyboardInterrupt traceback); SIGTERM: ended by the signal, as `cat`
    is (a shell sees 143). Every line printed before is a whole JSON object."""
    log = tmp_path / "kong.json"
    _many_lines(log, 20_000)  # seconds of parsing: the signal lands in the middle
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "parse", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ship_env())  # fmt: skip
    out, err, code, took = _signal_once_printing(proc, signum)
    assert code == (130 if signum == signal.SIGINT else -signal.SIGTERM), (code, err)
    assert err.strip() == "", err  # click ends a Ctrl-C with a newline, so that the prompt starts on a line of its own
    assert took < 5, f"{took:.1f} s to stop"
    lines = bytes(out).splitlines()
    assert 0 < len(lines) < 20_000
    for line in lines[:-1]:  # the last may be cut by the signal (SIGTERM's default action ends at once)
        orjson.loads(line)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_a_backfill_to_stdout_exits_128_plus_it_and_the_rerun_prints_the_rest(tmp_path, signum):
    """`kill PID` (the process alone, not its group) during `backfill --sink stdout`: exit 128+signal with the
    "interrupted" line and no traceback, every printed line a whole event; the next run prints what is left, so
    that between the two runs no record is missing."""
    total = 3000
    log = tmp_path / "kong.json"
    gen.write_records(log, range(total))
    args = [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", "stdout", "--state-dir",
            str(tmp_path / "state"), "--flush-interval", "0.05"]  # fmt: skip
    # --max-rate keeps the first run at about 3 s, so the signal lands in the middle of it.
    proc = subprocess.Popen([*args, "--max-rate", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ship_env())  # fmt: skip
    out, err, code, took = _signal_once_printing(proc, signum)
    assert code == 128 + signum, err
    assert took < 8, f"{took:.1f} s to stop (the shutdown timeout is 10 s)"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"interrupted by {signal.Signals(signum).name}" in err, err
    first = [gen.seq_of_segment_message(orjson.loads(line)) for line in bytes(out).splitlines()]
    assert 0 < len(set(first)) < total
    again = subprocess.run(args, capture_output=True, env=ship_env(), timeout=60)
    assert again.returncode == 0, again.stderr.decode()
    rest = [gen.seq_of_segment_message(orjson.loads(line)) for line in again.stdout.splitlines()]
    assert set(first) | set(rest) == set(range(total))
    assert len(rest) < total  # it resumed: what the first run had delivered is not printed again in full


# -- --help and --version anywhere ---------------------------------------------------------------------------------
def _bare_env(tmp_path, **extra: str) -> dict[str, str]:
    """The least a process can be started with: no locale, no home, no configuration of kong-ship."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def _unprivileged() -> list[str]:
    """A command prefix under which file modes hold for root too (as tests/test_inputs.py does it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only home would still be writable")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


def test_help_and_version_work_in_any_locale_and_without_a_usable_home(tmp_path):
    locked_home = tmp_path / "home"
    locked_home.mkdir(mode=0o500)
    nowhere = {"HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent/config", "XDG_CACHE_HOME": "/nonexistent/cache",
               "XDG_RUNTIME_DIR": "/nonexistent/run", "XDG_STATE_HOME": "/nonexistent/state"}
    envs = {
        "LANG=C, no HOME": _bare_env(tmp_path, LANG="C"),
        "LC_ALL=POSIX, HOME and XDG dirs that do not exist": _bare_env(tmp_path, LC_ALL="POSIX", **nowhere),
        "LC_ALL=C, ascii stdio": _bare_env(tmp_path, LC_ALL="C", PYTHONIOENCODING="ascii"),
        "an unknown locale, a read-only HOME": _bare_env(tmp_path, LANG="xx_YY.UTF-8", LC_ALL="xx_YY.UTF-8",
                                                         HOME=str(locked_home), XDG_CONFIG_HOME=str(locked_home / "c")),
    }  # fmt: skip
    # As root a mode-0500 home is still writable: without the capabilities that let root write anywhere, it is not.
    prefix = {"an unknown locale, a read-only HOME": _unprivileged()}
    commands = [("--version",), ("--help",), ("backfill", "--help")]

    def run(item):
        label, args = item
        return label, args, subprocess.run([*prefix.get(label, []), sys.executable, "-m", "shipper", *args],
                                           capture_output=True, env=envs[label], cwd=tmp_path, timeout=60)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [(label, args) for label in envs for args in commands]))
    failures = []
    for label, args, result in results:
        out = result.stdout.decode(errors="replace")
        if result.returncode != 0 or result.stderr:
            failures.append(f"{label}: {' '.join(args)}: exit {result.returncode}: {result.stderr[-300:]!r}")
        elif args == ("--version",) and out != f"kong-ship, version {shipper.__version__}\n":
            failures.append(f"{label}: --version printed {out!r}")  # exactly one line
        elif args != ("--version",) and not out.startswith("Usage: kong-ship"):
            failures.append(f"{label}: {' '.join(args)} printed {out[:100]!r}")
    assert not failures, "\n".join(failures)


# -- the configuration file ----------------------------------------------------------------------------------------
def test_a_config_file_that_is_a_directory_or_not_toml_is_one_line_naming_it(tmp_path):
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    folder = tmp_path / "conf.d"
    folder.mkdir()
    broken = tmp_path / "broken.toml"
    broken.write_text('[input]\nformat = "kong"\n[delivery\nbatch_size = 3\n')
    typo = tmp_path / "typo.toml"
    typo.write_text("[delivery]\nbatch_sise = 3\n")
    state = ("--state-dir", str(tmp_path / "s"))
    cases: list[Case] = []
    for command in (("parse", str(log)), ("backfill", str(log), "--sink", "stdout", *state)):
        cases += [
            ((*command, "--config", str(folder)), f"{folder}: Is a directory"),
            ((*command, "--config", str(broken)), "line 3"),  # where the TOML breaks
            ((*command, "--config", str(broken)), str(broken)),
            ((*command, "--config", str(typo)), f"{typo}: delivery.batch_sise: unknown key"),
        ]
    _all_usage_errors(cases)
    # The file named by KONG_SHIP_CONFIG is judged the same way.
    from_env = ship("parse", str(log), env=ship_env(KONG_SHIP_CONFIG=str(broken)))
    assert _one_error_line(from_env.returncode, from_env.stdout, from_env.stderr) is None and str(broken) in from_env.stderr.decode(), from_env.stderr


def test_a_config_file_can_be_a_pipe_as_bash_process_substitution_makes_it(tmp_path):
    """`kong-ship backfill --config <(render-config)`: the file is a FIFO, read once like any other."""
    log = tmp_path / "kong.json"
    gen.write_records(log, range(3))
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    text = f'[input]\npaths = ["{log}"]\n[state]\ndir = "{tmp_path / "state"}"\n[sinks.stdout]\nevent_name_template = "hit {{path}}"\n'

    def write() -> None:
        with open(fifo, "w") as handle:  # blocks until kong-ship opens it
            handle.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        result = ship("backfill", "--config", str(fifo), timeout=60)
    finally:
        if writer.is_alive():  # kong-ship never opened it: let the writer go
            with open(fifo, "rb") as unblock:
                unblock.read()
        writer.join(10)
    assert result.returncode == 0, result.stderr.decode()
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 3 and all(e["event"].startswith("hit /") for e in events)


# -- wording (the review's section 8) ---------------------------------------------------------------------------
def test_inputs_that_cannot_be_read_are_named_as_what_they_are(tmp_path):
    (tmp_path / "logs" / "x.json").mkdir(parents=True)  # a glob that matches only a directory
    only_dirs = ship("parse", str(tmp_path / "logs" / "*.json"))
    assert only_dirs.returncode == 1 and "matches only directories" in only_dirs.stderr.decode().splitlines()[0]
    assert "(standard input) is not read" in one_error(ship("parse", "-"))
    assert one_error(ship("parse", str(tmp_path / "nope.json"))).endswith("nope.json: no such file")
    assert "--config: expected a file name" in one_error(ship("parse", "x.json", "--config="))
    missing = one_error(ship("parse", "x.json", "--max-line-bytes"))
    assert "requires an argument" in missing and "'kong-ship parse --help'" in missing


def test_a_ctrl_c_while_the_command_line_loads_is_quiet_and_exit_130():
    """A SIGINT in the first ~0.1 s, while `shipper.cli` and click load (before `main` catches it), ended in a
    KeyboardInterrupt traceback. Delivered here, by a real signal, right after the package is imported."""
    script = "import os, signal, shipper; os.kill(os.getpid(), signal.SIGINT); import shipper.cli"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=ship_env(), timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGINT, b"", b"")
    # Other exceptions keep their report.
    done = subprocess.run([sys.executable, "-c", "import shipper; 1 / 0"], capture_output=True, env=ship_env(), timeout=60)
    assert done.returncode == 1 and b"ZeroDivisionError" in done.stderr
