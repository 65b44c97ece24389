"""The parts the pipeline wires: the counters table, the spool feeder of spool-fed commands, the directory
watcher and the checkpoint resume."""

from __future__ import annotations

import subprocess
import sys
import threading

from shipper.counters import COUNTERS, LaneCounters, LaneSummary
from shipper.delivery.acks import AckTracker
from shipper.sources.feeder import SpoolFeeder
from shipper.sources.files import FileSource
from shipper.sources.resume import Resume
from shipper.sources.spool import Spool
from shipper.sources.watch import directories_of
from shipper.threads import RunContext


def test_every_counter_is_an_attribute_of_the_summary():
    counters = LaneCounters()
    counters.reader["read"] += 3
    counters.add("sent", 2)
    counters.add("rejected", 1)
    summary = LaneSummary("segment", counters.snapshot(), 10, [])
    assert (summary.read, summary.sent, summary.rejected, summary.blank) == (3, 2, 1, 0)
    assert {spec.name for spec in COUNTERS} == set(summary.counts)
    try:
        summary.nonsense  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown name must not read as a counter")


def test_metric_names_are_unique():
    names = [spec.metric for spec in COUNTERS if spec.metric]
    assert len(names) == len(set(names))


def _context(stop: threading.Event, behind=dict) -> RunContext:
    return RunContext(stop=stop, wake=lambda: None, behind=behind, fail=lambda reason: None)


def test_the_feeder_steps_until_the_run_stops_and_prunes_acknowledged_segments(tmp_path):
    spool = Spool(str(tmp_path), segment_bytes=1)  # every append starts a new segment
    spool.append("test", [{"n": 1}])
    spool.append("test", [{"n": 2}])
    first = spool.segments()[0]
    stop = threading.Event()
    steps = []

    def step() -> bool:
        steps.append(1)
        if len(steps) == 3:
            stop.set()
        return True

    feeder = SpoolFeeder(spool, name="test", prune_every=0.0)
    assert feeder.feed(_context(stop, behind=lambda: {first: 0}), 0.01, step) is True
    assert len(steps) == 3
    assert first not in spool.segments()
    spool.close()


def test_the_feeder_ends_when_its_step_says_so_or_when_told(tmp_path):
    feeder = SpoolFeeder(Spool(str(tmp_path)), name="test", prune_every=60.0)
    assert feeder.feed(_context(threading.Event()), 0.01, lambda: False) is False
    done = threading.Event()
    done.set()
    assert feeder.feed(_context(threading.Event()), 0.01, until=done) is False
    feeder.spool.close()


def test_the_feeder_takes_and_releases_the_spool_lock(tmp_path):
    feeder = SpoolFeeder.open(str(tmp_path), "test", name="test", prune_every=1.0)
    try:
        SpoolFeeder.open(str(tmp_path), "test", name="test", prune_every=1.0)
    except Exception as exc:  # noqa: BLE001
        assert "another kong-ship test" in str(exc)
    else:
        raise AssertionError("a second writer must be refused")
    feeder.close()
    SpoolFeeder.open(str(tmp_path), "test", name="test", prune_every=1.0).close()


def test_the_watched_directory_is_the_deepest_without_glob_characters(tmp_path):
    (tmp_path / "logs").mkdir()
    assert directories_of([str(tmp_path / "logs" / "*" / "kong.json")]) == {str(tmp_path / "logs")}
    assert directories_of([str(tmp_path / "missing" / "kong.json")]) == set()


def test_resume_offers_checkpoints_and_saves_what_is_acknowledged(tmp_path):
    log = tmp_path / "kong.json"
    log.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    acks = AckTracker()
    resume = Resume(str(tmp_path / "state"), "segment", acks)
    resume.load()
    source = FileSource([str(log)], known=resume.known, follow=False, on_opened=acks.start)
    lines = list(source.read_all())
    for file_id, _, _, end in lines:
        acks.ack(file_id, acks.issue(file_id), end)
    assert resume.behind(source) == {str(log): 0}
    resume.save(source)
    resume.close()  # its run's end: the checkpoints' lock let go
    again = Resume(str(tmp_path / "state"), "segment", AckTracker())
    again.load()
    (file_id,) = {line[0] for line in lines}
    assert again.known(file_id)[file_id].offset == log.stat().st_size


def test_file_notifications_out_of_descriptors_fall_back_to_polling(tmp_path):
    """Importing watchdog opens files: with every descriptor taken (a flood of connections to receive, or of
    files), it raised OSError, not ImportError, and the run ended. It is a warning and polling now."""
    script = """
import os, resource, sys
from shipper.sources.watch import Watcher
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
Watcher([sys.argv[1] + "/kong.json"], lambda: None, poll_interval=0.5).start()
print("started", "watchdog" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "started False\n", done.stderr
    assert "file notifications unavailable" in done.stderr and "polling every 0.50 s" in done.stderr, done.stderr


def test_file_notifications_stop_without_a_line_of_the_librarys_own(tmp_path):
    """watchdog logs a race of its own shutdown (`InotifyEmitter.queue_events() called when the thread is
    inactive`, about 1 stop in 40 here) through a logger with no handler: Python's last-resort handler wrote it
    to stderr, in none of kong-ship's formats, at the end of a run that went well."""
    script = """
import sys
from shipper.sources.watch import Watcher
for _ in range(400):
    watcher = Watcher([sys.argv[1] + "/*.json"], lambda: None, poll_interval=0.5)
    watcher.start()
    with open(sys.argv[1] + "/kong.json", "a") as log:
        log.write("x\\n")
    watcher.stop()
print("stopped")
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\n", "")
