"""A review of the day's changes (since 78d42a9): what they broke or missed, each shown by a real process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ship_env

# fd 2 is a pipe of one page, non-blocking (as a terminal or a pipe another program set O_NONBLOCK on) and full:
# the first log line meets EAGAIN. Once the pipe is drained, later lines must arrive again.
_EAGAIN_SCRIPT = textwrap.dedent(
    """
    import fcntl, logging, os, sys
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ: one page
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
    filler = 0
    try:
        while True:
            filler += os.write(w, b".")
    except BlockingIOError:
        pass
    os.dup2(w, 2)
    from shipper.commands.running import setup_logging
    from shipper.commands.stderr import say
    setup_logging("info")
    log = logging.getLogger("kong-ship")
    for n in range(300):  # over the 8 KiB sys.stderr buffers: EAGAIN, the pipe's reader there, only slow
        log.warning("while full %d %s", n, "x" * 60)

    def drain():
        got = b""
        try:
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                got += chunk
        except BlockingIOError:
            pass
        return got

    def settle():  # the reader catches up: what waits in sys.stderr's buffer goes out
        got = drain()
        for _ in range(1000):
            try:
                sys.stderr.flush()
                return got + drain()
            except BlockingIOError:
                got += drain()
        raise AssertionError("stderr never flushed")

    drained = settle()
    log.warning("after the drain")
    say("error", "said after the drain")
    rest = settle()
    os.write(1, (drained + rest).replace(b".", b""))
    os.write(1, ("\\nfd2=" + os.readlink("/proc/self/fd/2") + "\\n").encode())
    """
)


def test_a_stderr_that_is_only_slow_for_a_moment_is_not_thrown_away():
    """EAGAIN on a non-blocking stderr (its reader slow, not gone) sent fd 2 to /dev/null for the rest of the run
    (stderr.stderr_lost): every later log line, the summary and the fatal line were lost."""
    env = ship_env()
    env.pop("PYTHONUNBUFFERED", None)  # as installed: sys.stderr a BufferedWriter, which raises EAGAIN when full
    result = subprocess.run([sys.executable, "-c", _EAGAIN_SCRIPT], capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "after the drain" in out and "said after the drain" in out, out
    assert "fd2=pipe:" in out, out


def test_a_full_disk_under_stderr_does_not_silence_every_later_line():
    """ENOSPC (stderr a file on a full disk, /dev/full here) is no reader gone: the disk may have room again in a
    minute, and a service that runs for months must not log nothing from then on. The line is lost, fd 2 kept."""
    script = textwrap.dedent(
        """
        import logging, os
        from shipper.commands.running import setup_logging
        from shipper.commands.summary import summary
        setup_logging("info")
        logging.getLogger("kong-ship").warning("a line on a full disk")
        os.write(1, os.readlink("/proc/self/fd/2").encode())
        """
    )
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=full, env=ship_env(),
                                timeout=30)  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == b"/dev/full"


def test_give_up_after_ends_an_attempt_in_flight_on_time():
    """--give-up-after 0.5 with an attempt whose deadline is 9 s (--timeout 3) and a vendor trickling its status
    line: the run gave up only once the attempt's own deadline had passed (9 s, 70 s with --timeout 30), not when
    the time without a delivery ran out."""
    import threading

    from conftest import wait_until
    from test_sender_deadline import RawServer, items, read_request, status_line_for_ever

    from shipper.deadletter import DeadLetter
    from shipper.delivery.acks import AckTracker
    from shipper.delivery.sender import FatalDelivery, Sender
    from shipper.sinks.webhook import WebhookSink

    def unavailable(conn, stop) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()

    server = RawServer(unavailable, status_line_for_ever)
    acks = AckTracker()
    acks.start("f", 0)
    sender = Sender(WebhookSink(server.url), acks, DeadLetter(None), threading.Event(),
                    lambda key, n: None, timeout=3.0, retry_initial=0.01, retry_max=0.05,
                    give_up_after=0.5)  # fmt: skip
    outcome: dict = {}

    def deliver() -> None:
        try:
            sender.deliver(items(3))
            outcome["result"] = "delivered"
        except FatalDelivery as exc:
            outcome["result"] = str(exc)

    try:
        threading.Thread(target=deliver, daemon=True).start()
        # Generous for a loaded machine, and well under the attempt's own 9 s.
        assert wait_until(lambda: "result" in outcome, timeout=6.0), "gave up only at the attempt's deadline"
        assert "giving up (--give-up-after)" in outcome["result"], outcome
        assert len(server.connections) == 2, server.connections
    finally:
        sender.close()
        server.close()


def test_a_sinks_keepalive_is_a_bounded_duration_too(tmp_path):
    """--moesif-keepalive / --runscope-keepalive (ms) had no bound: 10**400 was a traceback (OverflowError at
    the sink's construction) and exit 1; now a usage error, one line, exit 2, as every other duration."""
    log = tmp_path / "kong.json"
    log.write_text("{}\n")
    huge = "1" + "0" * 400
    for sink, option in (("moesif", "--moesif-keepalive"), ("runscope", "--runscope-keepalive")):
        result = subprocess.run(
            [sys.executable, "-m", "shipper", "backfill", str(log), "--sink", sink, "--dry-run", option, huge],
            capture_output=True, env=ship_env(MOESIF_APPLICATION_ID="app", RUNSCOPE_BUCKET_KEY="bucket"), timeout=60,
        )
        err = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(err) == 1 and option in err[0], result.stderr
