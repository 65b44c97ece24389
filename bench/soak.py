"""Soak test (issue 4), outside CI: `kong-ship tail` for N minutes against a loopback fake Segment, with random
vendor faults, log rotations and restarts of the shipper, then an accounting of every record.

    python bench/soak.py --minutes 10 [--seed S] [--rate LINES_PER_S] [--keep]

What runs, all at once, for `--minutes`:
- a writer appends generated Kong 3.x file-log lines (bench/records.py, ~2 KB each) at a steady `--rate` into
  LOGDIR/kong.json, one O_APPEND write per line as Kong does. Each record carries a unique `seq` (`?seq=N`, which
  Segment's `properties.queryObject.seq` gives back); one record in five has no `request.id`, so its messageId
  is kong-ship's fallback (file identity + offset) rather than Kong's request id.
  Every few seconds it rotates the log:
    * rename-and-create: `kong.json` → `kong.json.<n>`; the writer goes on writing to the renamed file for up to
      half a second (Kong has not reopened yet), then creates a new `kong.json`; sometimes a few straggler lines
      still go to the old file afterwards, as another Kong worker would write them;
    * copytruncate: `kong.json` is copied to `kong.json.<n>` and truncated in place (the writer is held during
      the copy, so no line falls in logrotate's copy/truncate gap: that loss is documented, not a bug).
  Rotated files beyond the newest `--keep-rotated` are deleted (logrotate's `rotate K`), but only once every
  record in them has been delivered: the harness never deletes data that is still owed.
- a fake Segment (bench/fake_vendors.CountingSegment, extended here) that validates every batch, counts each
  record by seq and keeps the messageId of its first delivery, and injects random faults: stretches of 503,
  stretches of 429 with `Retry-After: 1`, connection resets, slow replies (1-4 s), hung replies (processed,
  answered after the client's `--timeout`: the vendor has the batch, the client does not know, so it resends)
  and connection refused (the server down for a while, then back on the same port).
- `kong-ship tail 'LOGDIR/kong.json*' --sink segment ...` as a real subprocess, at random moments sent SIGTERM
  (then restarted), `kill -9` (then restarted) or SIGHUP (no restart). Its VmHWM is sampled from /proc.

Then: faults and writer stop, the shipper (restarted if needed) runs cleanly until every written record is
delivered or `--drain-timeout` passes, gets SIGTERM, and the report is printed and written to
bench/results/soak-<UTC time>.json: records written, delivered (distinct), duplicated (deliveries beyond the
first, and whether each copy kept its messageId), lost (written − delivered), restarts, faults and rotations by
kind, peak RSS. For lost records it says where each run of them was written (file, offsets, rotation, time) and
what happened around that time, and checks that the lines are really in the files, so a harness bug can be told
from a shipper bug; the largest runs of duplicates are listed with the events around them (a resend should
follow a kill -9, a shutdown cut short, a hung reply or a copytruncate). Anomalies that lose nothing are listed
too: a SIGTERM that did not end in exit 0, a traceback in kong-ship's stderr, an exit nobody asked for.
Exit status 1 if anything was lost, a copy changed its messageId, or the fake refused a batch. The work
directory (logs, state, each kong-ship instance's stderr) is deleted after a clean run and kept otherwise.
"""

from __future__ import annotations

import argparse
import array
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.fake_vendors import CountingSegment, Rejected, _reply  # noqa: E402
from bench.procs import _hwm_kib  # noqa: E402
from bench.records import KongRecords  # noqa: E402
from tests.fakes.httpfake import Request, Response  # noqa: E402

WRITE_KEY = "soak-write-key"
MIB = 1024 * 1024
LIVE = "kong.json"


class Bag:
    """Draws kinds in proportion to their weights, like cards from a shuffled deck refilled when empty: every
    kind comes up within one deck, so a run of a few dozen draws exercises all of them (plain weighted draws
    can leave a rare kind out of a whole run)."""

    def __init__(self, weights: dict[str, int], rng: random.Random) -> None:
        self.weights, self.rng, self.deck = weights, rng, []

    def draw(self) -> str:
        if not self.deck:
            self.deck = [kind for kind, n in self.weights.items() for _ in range(n)]
            self.rng.shuffle(self.deck)
        return self.deck.pop()


def expected_message_id(seq: int) -> str | None:
    """Kong's request.id of record seq (bench/records.py), which kong-ship uses as messageId; None for the records
    written without one (their id is derived from the file, so it is only checked for stability)."""
    return None if seq % 5 == 0 else hashlib.md5(f"rid:{seq}".encode()).hexdigest()


class Timeline:
    """What happened when (seconds since the start), for the report and the lost-record evidence."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.events.append((round(self.now(), 3), kind, detail))

    def around(self, start: float, end: float, margin: float = 8.0) -> list[tuple[float, str, str]]:
        with self._lock:
            return [e for e in self.events if start - margin <= e[0] <= end + margin]


# -- the vendor ------------------------------------------------------------------------------------------------
class SoakSegment(CountingSegment):
    """CountingSegment with an open-ended record count, the messageId of each record's first delivery, the time
    of that delivery, and fault modes. `mode` ("503", "429" or None) answers every request while set; resets,
    slow and hung replies are scripted per request (tests/fakes/httpfake.py); "refused" is stop() then start()."""

    def __init__(self, write_key: str, capacity: int) -> None:
        super().__init__(write_key, capacity)
        self.ids: dict[int, str] = {}
        self.first_at = array.array("d", bytes(8 * capacity))  # monotonic time of the first delivery
        self.id_mismatches: list[tuple[int, str, str]] = []
        self.id_unexpected: list[tuple[int, str, str]] = []  # request.id records whose messageId is not it
        self.mode: str | None = None
        self.faulted: collections.Counter[str] = collections.Counter()  # requests answered by a fault mode

    def _grow(self, seq: int) -> None:
        more = max(seq + 1 - len(self.seen), len(self.seen) // 2)
        self.seen.extend(bytes(more))
        self.first_at.extend(array.array("d", bytes(8 * more)))

    def records_of(self, req: Request) -> list[tuple[int | None, str]]:  # type: ignore[override]
        out = []
        for msg in self.messages_of(req):
            props = msg.get("properties")
            query = props.get("queryObject") if isinstance(props, dict) else None
            seq = query.get("seq") if isinstance(query, dict) else None
            out.append((int(seq) if isinstance(seq, str) and seq.isdigit() else None, msg["messageId"]))
        return out

    def respond(self, req: Request) -> Response:
        mode = self.mode
        if mode == "503":
            with self._lock:
                self.faulted["503"] += 1
            return _reply(503, b'{"error":"service unavailable (soak)"}')
        if mode == "429":
            with self._lock:
                self.faulted["429"] += 1
            return _reply(429, b'{"error":"rate limited (soak)"}', {"Retry-After": "1"})
        try:
            found = self.records_of(req)
        except (Rejected, orjson.JSONDecodeError) as exc:
            status = exc.status if isinstance(exc, Rejected) else 400
            with self._lock:
                self.errors.append(f"{status} {exc}")
            self.notify()
            return _reply(status, orjson.dumps({"error": str(exc)}))
        now = time.monotonic()
        with self._lock:
            for seq, message_id in found:
                if seq is None:
                    self.unexpected += 1
                    continue
                if seq >= len(self.seen):
                    self._grow(seq)
                if self.seen[seq] == 0:
                    self.first_at[seq] = now
                    self.ids[seq] = message_id
                    expected = expected_message_id(seq)
                    if expected is not None and message_id != expected and len(self.id_unexpected) < 100:
                        self.id_unexpected.append((seq, expected, message_id))
                elif self.ids[seq] != message_id:
                    self.id_mismatches.append((seq, self.ids[seq], message_id))
                if self.seen[seq] < 255:
                    self.seen[seq] += 1
            self.records += len(found)
            self.batches += 1
            self.last_ack = now
        self.notify()
        return self.ok()

    def delivered(self, seq: int) -> bool:
        return seq < len(self.seen) and self.seen[seq] > 0

    def snapshot(self, count: int) -> bytes:
        with self._lock:
            view = bytes(self.seen[:count])
        return view + bytes(count - len(view))


class Faults(threading.Thread):
    """Random vendor faults, one at a time, with quiet spells between them."""

    KINDS = {"503": 3, "429": 2, "reset": 2, "slow": 2, "hang": 1, "refused": 2}

    def __init__(self, fake: SoakSegment, rng: random.Random, timeline: Timeline, http_timeout: float) -> None:
        super().__init__(daemon=True, name="faults")
        self.fake, self.rng, self.timeline, self.http_timeout = fake, rng, timeline, http_timeout
        self.stop = threading.Event()
        self.windows: collections.Counter[str] = collections.Counter()  # faults started, by kind
        self.scripted: collections.Counter[str] = collections.Counter()  # per-request actions queued, by kind
        self.seconds: collections.Counter[str] = collections.Counter()  # time spent in 503/429/refused
        self.error: str | None = None

    def run(self) -> None:
        rng, fake = self.rng, self.fake
        bag = Bag(self.KINDS, rng)
        try:
            while not self.stop.wait(rng.uniform(2.0, 12.0)):
                kind = bag.draw()
                self.windows[kind] += 1
                if kind in ("503", "429"):
                    length = rng.uniform(2.0, 15.0 if kind == "503" else 10.0)
                    self.timeline.add(f"fault:{kind}", f"{length:.1f} s")
                    fake.mode = kind
                    started = time.monotonic()
                    self.stop.wait(length)
                    fake.mode = None
                    self.seconds[kind] += time.monotonic() - started
                    self.timeline.add(f"fault:{kind}:end")
                elif kind == "refused":
                    length = rng.uniform(2.0, 15.0)
                    self.timeline.add("fault:refused", f"{length:.1f} s")
                    fake.stop()
                    started = time.monotonic()
                    self.stop.wait(length)
                    fake.start()
                    self.seconds[kind] += time.monotonic() - started
                    self.timeline.add("fault:refused:end")
                else:
                    n = rng.randint(1, 5) if kind != "hang" else rng.randint(1, 2)
                    if kind == "reset":
                        actions = ["reset"] * n
                    elif kind == "slow":
                        actions = [f"slow:{rng.uniform(1.0, 4.0):.2f}" for _ in range(n)]
                    else:  # processed now, answered after the client gave up: a lost acknowledgement
                        actions = [f"hang:{self.http_timeout + rng.uniform(1.0, 3.0):.2f}" for _ in range(n)]
                    fake.script(actions)
                    self.scripted[kind] += n
                    self.timeline.add(f"fault:{kind}", " ".join(actions))
        except Exception as exc:  # noqa: BLE001 - reported, not fatal to the soak
            self.error = repr(exc)
        finally:
            fake.mode = None
            if fake._server is None:
                fake.start()

    def end(self) -> None:
        self.stop.set()
        self.join()
        unused = self.fake.script_remaining
        self.fake.clear_script()
        self.timeline.add("faults:stopped", f"{unused} scripted actions unused")
        self.unused = unused


# -- the writer --------------------------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Appends one line per seq at a steady rate, rotating the log now and then. Knows where every seq went:
    `loc_file[seq]` indexes `files` (a physical file; its `name` follows renames, and after a copytruncate it
    names the copy, which holds those lines at the same offsets), `loc_off[seq]` its offset, `loc_time[seq]`
    when it was written, `loc_kind[seq]` 0 normal, 1 late (after a rename, before the reopen), 2 straggler."""

    KIND_NAMES = {0: "normal", 1: "late write to the renamed file", 2: "straggler write to the renamed file"}

    def __init__(self, logdir: str, rate: float, rng: random.Random, timeline: Timeline, fake: SoakSegment,
                 rotate_every: tuple[float, float], keep_rotated: int, seed: int) -> None:
        super().__init__(daemon=True, name="writer")
        self.logdir, self.rate, self.rng, self.timeline, self.fake = logdir, rate, rng, timeline, fake
        self.rotate_every, self.keep_rotated = rotate_every, keep_rotated
        self.gen = KongRecords(seed)
        self.stop = threading.Event()
        self.n = 0  # records written (the next seq)
        self.files: list[dict[str, Any]] = []  # per physical file: name, runs of seqs, how it came about
        self.loc_file = array.array("i")
        self.loc_off = array.array("q")
        self.loc_time = array.array("d")
        self.loc_kind = bytearray()
        self.rotations: collections.Counter[str] = collections.Counter()
        self.late_lines = 0
        self.straggler_lines = 0
        self.deleted: list[str] = []
        self.rotated: list[int] = []  # file numbers of rotated files still on disk, oldest first
        self.rotation_number = 0
        self.worst_lag = 0.0
        self.error: str | None = None

    # files
    def _new_file(self, how: str) -> tuple[int, int]:
        path = os.path.join(self.logdir, LIVE)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self.files.append({"name": LIVE, "runs": [], "created": round(self.timeline.now(), 3), "how": how})
        return fd, len(self.files) - 1

    def _write(self, fd: int, fno: int, kind: int) -> None:
        seq = self.n
        line = self.gen.line(seq)
        if seq % 5 == 0:  # no request.id: kong-ship falls back to an id from the file identity and offset
            record = orjson.loads(line.replace(b"\\/", b"/"))
            del record["request"]["id"]
            line = orjson.dumps(record).replace(b"/", b"\\/") + b"\n"
        written = os.write(fd, line)
        assert written == len(line), "short write"
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the position is the end of what was just written
        self.loc_file.append(fno)
        self.loc_off.append(end - len(line))
        self.loc_time.append(self.timeline.now())
        self.loc_kind.append(kind)
        runs = self.files[fno]["runs"]
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
        self.n = seq + 1

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001
            self.error = repr(exc)
            self.timeline.add("writer:error", repr(exc))
            raise

    def _run(self) -> None:
        rng = self.rng
        fd, fno = self._new_file("first")
        old: tuple[int, int] | None = None  # the renamed file, still written to (late writes, stragglers)
        late_until = 0.0  # writes go to `old` until then (the writer has not reopened yet)
        stragglers = 0  # lines still to go to `old` after the reopen
        start = time.monotonic()
        next_rotation = start + rng.uniform(*self.rotate_every)
        next_cleanup = start + 2.0
        i = 0
        while not self.stop.is_set():
            due = start + i / self.rate
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
                now = time.monotonic()
            else:
                self.worst_lag = max(self.worst_lag, now - due)
            i += 1
            if old is not None and late_until and now >= late_until:
                fd, fno = self._new_file("rename-and-create")  # the writer reopens: a new kong.json
                late_until = 0.0
                if stragglers == 0:
                    os.close(old[0])
                    old = None
            if old is not None and late_until:
                self._write(old[0], old[1], 1)
                self.late_lines += 1
            elif old is not None and stragglers and rng.random() < 0.02:
                self._write(old[0], old[1], 2)
                self.straggler_lines += 1
                stragglers -= 1
                if stragglers == 0:
                    os.close(old[0])
                    old = None
            else:
                self._write(fd, fno, 0)
            if now >= next_rotation and not late_until:
                if old is not None:  # stragglers not written by now are not written
                    os.close(old[0])
                    old, stragglers = None, 0
                self.rotation_number += 1
                rotated = f"{LIVE}.{self.rotation_number}"
                if rng.random() < 0.7:
                    os.rename(os.path.join(self.logdir, LIVE), os.path.join(self.logdir, rotated))
                    self.files[fno]["name"] = rotated
                    self.rotated.append(fno)
                    late = rng.uniform(0.0, 0.5)
                    stragglers = rng.randint(1, 4) if rng.random() < 0.3 else 0
                    old, late_until = (fd, fno), time.monotonic() + late
                    fd, fno = -1, -1
                    self.rotations["rename"] += 1
                    self.timeline.add("rotate:rename", f"{LIVE} → {rotated} at seq {self.n}; late writes for {late:.2f} s, "
                                                       f"{stragglers} stragglers")
                else:
                    # copytruncate, the writer held meanwhile (no line in the copy/truncate gap)
                    shutil.copyfile(os.path.join(self.logdir, LIVE), os.path.join(self.logdir, rotated))
                    os.truncate(os.path.join(self.logdir, LIVE), 0)
                    self.files[fno]["name"] = rotated  # those lines are in the copy now, at the same offsets
                    self.rotated.append(fno)
                    self.files.append({"name": LIVE, "runs": [], "created": round(self.timeline.now(), 3),
                                       "how": "copytruncate"})
                    fno = len(self.files) - 1
                    self.rotations["copytruncate"] += 1
                    self.timeline.add("rotate:copytruncate", f"{LIVE} copied to {rotated} and truncated at seq {self.n}")
                next_rotation = time.monotonic() + rng.uniform(*self.rotate_every)
            if now >= next_cleanup:
                next_cleanup = now + 2.0
                self._cleanup(old[1] if old else -1)
        if old is not None:
            if late_until:
                fd, fno = self._new_file("rename-and-create")
            os.close(old[0])
        os.close(fd)

    def _cleanup(self, busy: int) -> None:
        """logrotate's `rotate K`: delete the oldest rotated files beyond K, once all their records are delivered."""
        while len(self.rotated) > self.keep_rotated:
            fno = self.rotated[0]
            info = self.files[fno]
            if fno == busy or not all(self.fake.delivered(s) for a, b in info["runs"] for s in range(a, b + 1)):
                return
            os.unlink(os.path.join(self.logdir, info["name"]))
            info["deleted"] = round(self.timeline.now(), 3)
            self.deleted.append(info["name"])
            self.rotated.pop(0)
            self.rotations["deleted (all delivered)"] += 1

    def end(self) -> None:
        self.stop.set()
        self.join()
        self.timeline.add("writer:stopped", f"{self.n} records written")


# -- the shipper -------------------------------------------------------------------------------------------------
class Shipper(threading.Thread):
    """Runs `kong-ship tail` and, until told to stop the chaos, signals it at random moments: SIGTERM (then a
    restart), kill -9 (then a restart) or SIGHUP. An exit it did not cause is recorded and restarted."""

    def __init__(self, argv: list[str], env: dict[str, str], work: str, rng: random.Random, timeline: Timeline,
                 every: tuple[float, float], shutdown_timeout: float) -> None:
        super().__init__(daemon=True, name="shipper")
        self.argv, self.env, self.work, self.rng, self.timeline = argv, env, work, rng, timeline
        self.every, self.shutdown_timeout = every, shutdown_timeout
        self.proc: subprocess.Popen | None = None
        self.instances = 0
        self.started_at = 0.0
        self.stderr_paths: list[str] = []
        self.hwm_kib: dict[int, int] = {}
        self.restarts: collections.Counter[str] = collections.Counter()
        self.exits: list[dict[str, Any]] = []  # how each instance ended
        self.unexpected: list[dict[str, Any]] = []
        self.chaos = threading.Event()
        self.chaos.set()
        self.halt = threading.Event()
        self._lock = threading.RLock()

    def launch(self) -> None:
        with self._lock:
            self.instances += 1
            path = os.path.join(self.work, f"shipper-{self.instances:03d}.stderr")
            self.stderr_paths.append(path)
            with open(path, "wb") as err:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err,
                                             start_new_session=True)
            self.started_at = time.monotonic()
            self.timeline.add("shipper:start", f"instance {self.instances}, pid {self.proc.pid}")

    def sample(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.hwm_kib[proc.pid] = max(self.hwm_kib.get(proc.pid, 0), _hwm_kib(proc.pid))

    def _ended(self, how: str, code: int, took: float) -> None:
        entry = {"instance": self.instances, "how": how, "exit": code, "seconds_to_exit": round(took, 2),
                 "uptime": round(time.monotonic() - self.started_at, 1), "t": round(self.timeline.now(), 1)}
        self.exits.append(entry)
        self.timeline.add("shipper:exit", f"instance {self.instances} {how}: exit {code} after {took:.2f} s")

    def stop_process(self, sig: int, how: str, wait: float) -> int:
        with self._lock:
            proc = self.proc
            assert proc is not None
            self.sample()
            sent = time.monotonic()
            proc.send_signal(sig)
            try:
                code = proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.timeline.add("shipper:hung", f"instance {self.instances} still running {wait:.0f} s after {how}")
                self.restarts[f"{how} not obeyed in {wait:.0f} s: kill -9"] += 1
                proc.kill()
                code = proc.wait()
            self._ended(how, code, time.monotonic() - sent)
            self.proc = None
            return code

    def run(self) -> None:
        rng = self.rng
        bag = Bag({"sigterm": 2, "kill9": 2, "sighup": 1}, rng)
        next_action = time.monotonic() + rng.uniform(*self.every)
        while not self.halt.wait(0.1):
            with self._lock:
                self.sample()
                proc = self.proc
                if proc is not None and proc.poll() is not None:
                    self._ended("exited by itself", proc.returncode, 0.0)
                    with open(self.stderr_paths[-1], errors="replace") as f:
                        tail = f.read()[-2000:]
                    self.unexpected.append({"instance": self.instances, "exit": proc.returncode, "stderr_tail": tail})
                    self.restarts["unexpected exit"] += 1
                    self.proc = None
                    time.sleep(1.0)
                    self.launch()
                    continue
            if not self.chaos.is_set() or time.monotonic() < next_action:
                continue
            kind = bag.draw()
            self.restarts[kind] += 1
            if kind == "sighup":
                self.timeline.add("shipper:sighup", f"instance {self.instances}")
                with self._lock:
                    if self.proc is not None:
                        self.proc.send_signal(signal.SIGHUP)
            else:
                self.timeline.add(f"shipper:{kind}", f"instance {self.instances}")
                if kind == "sigterm":
                    self.stop_process(signal.SIGTERM, "SIGTERM", self.shutdown_timeout + 10)
                else:
                    self.stop_process(signal.SIGKILL, "kill -9", 10)
                self.halt.wait(rng.uniform(0.0, 3.0))  # down for a moment, as systemd's RestartSec would leave it
                with self._lock:
                    if self.proc is None and not self.halt.is_set():  # the end of the run may have started one
                        self.launch()
            next_action = time.monotonic() + rng.uniform(*self.every)

    def end(self) -> None:
        self.halt.set()
        self.join()


# -- the report ----------------------------------------------------------------------------------------------------
def runs_of(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def line_on_disk(logdir: str, name: str, offset: int, seq: int) -> str:
    path = os.path.join(logdir, name)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if f'?seq={seq}&'.encode() in line or f'?seq={seq}"'.encode() in line:
        return "present at that offset"
    return "NOT at that offset"


def checkpoint_facts(logdir: str, state: str, name: str) -> dict[str, Any]:
    from shipper.sources.files import HEAD_BYTES, identity

    facts: dict[str, Any] = {}
    path = os.path.join(logdir, name)
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        facts["size"] = os.path.getsize(path)
    except OSError as exc:
        return {"file": f"unreadable ({exc.strerror})"}
    newline = head.find(b"\n")
    file_id = identity(head[: newline + 1] if newline >= 0 else head)
    facts["identity"] = file_id
    try:
        with open(os.path.join(state, "checkpoints-segment.json"), "rb") as f:
            data = orjson.loads(f.read())
        entries = data.get("files") or data.get("entries") or data
        entry = entries.get(file_id) if isinstance(entries, dict) else None
        facts["checkpoint"] = entry
    except (OSError, ValueError) as exc:
        facts["checkpoint"] = f"unreadable ({exc})"
    return facts


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def stderr_notes(paths: list[str]) -> dict[str, Any]:
    counts: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    tracebacks: list[str] = []
    for path in paths:
        with open(path, errors="replace") as f:
            text = f.read()
        start = 0
        while (start := text.find("Traceback", start)) >= 0:
            # the whole block, up to kong-ship's next own line; long ones keep their start and their end
            end = text.find("\nkong-ship:", start)
            block = text[start : end if end >= 0 else len(text)]
            if len(block) > 2500:
                block = block[:600] + "\n  [...]\n" + block[-1800:]
            tracebacks.append(f"{os.path.basename(path)}: {block}")
            start += 1
        for line in text.splitlines():
            for level in ("ERROR", "WARNING", "CRITICAL"):
                if level in line:
                    # "... WARNING message with numbers" → a key without the numbers, to count kinds
                    message = line.split(level, 1)[1].strip(" :")
                    key = level + ": " + "".join("#" if c.isdigit() else c for c in message)[:90]
                    counts[key] += 1
                    samples.setdefault(key, line[:300])
    return {"levels": dict(counts.most_common(30)), "samples": samples, "tracebacks": tracebacks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True, help="how long the chaos lasts")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock; printed)")
    ap.add_argument("--rate", type=float, default=500.0, help="lines written per second (default %(default)s)")
    ap.add_argument("--rotate-every", type=float, nargs=2, default=(5.0, 25.0), metavar=("MIN", "MAX"),
                    help="seconds between rotations, drawn uniformly (default 5 25)")
    ap.add_argument("--restart-every", type=float, nargs=2, default=(5.0, 30.0), metavar=("MIN", "MAX"),
                    help="seconds between signals to the shipper, drawn uniformly (default 5 30)")
    ap.add_argument("--keep-rotated", type=int, default=5, help="rotated files kept (once delivered) (default 5)")
    ap.add_argument("--http-timeout", type=float, default=5.0,
                    help="kong-ship --timeout; hung replies outlast it (default %(default)s)")
    ap.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to deliver the rest at the end")
    ap.add_argument("--workdir", help="where logs, state and stderr go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even when nothing was lost")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    rng = random.Random(seed)
    started = datetime.now(UTC)
    work = args.workdir or tempfile.mkdtemp(prefix="kong-ship-soak-")
    logdir, state = os.path.join(work, "logs"), os.path.join(work, "state")
    os.makedirs(logdir, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    shutdown_timeout = 3.0
    exe = shutil.which("kong-ship")
    base = [exe] if exe else [sys.executable, "-m", "shipper"]
    timeline = Timeline()
    print(f"soak: {args.minutes:g} min, seed {seed}, {args.rate:g} lines/s, work dir {work}", file=sys.stderr, flush=True)

    capacity = int(args.rate * args.minutes * 60 * 1.3) + 10_000
    fake = SoakSegment(WRITE_KEY, capacity).start()
    argv = base + ["tail", os.path.join(logdir, LIVE + "*"), "--sink", "segment", "--endpoint", fake.url,
                   "--state-dir", state, "--flush-interval", "0.2", "--retry-max-delay", "2",
                   "--shutdown-timeout", str(shutdown_timeout), "--timeout", str(args.http_timeout)]  # fmt: skip
    env = dict(os.environ, SEGMENT_WRITE_KEY=WRITE_KEY)
    # Separate random streams, so that one part's draws do not shift the others'.
    writer = Writer(logdir, args.rate, random.Random(rng.random()), timeline, fake, tuple(args.rotate_every),
                    args.keep_rotated, seed)
    faults = Faults(fake, random.Random(rng.random()), timeline, args.http_timeout)
    shipper = Shipper(argv, env, work, random.Random(rng.random()), timeline, tuple(args.restart_every),
                      shutdown_timeout)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(args, seed, started, work, logdir, state, argv, timeline, fake, writer, faults, shipper, shutdown_timeout)
    except KeyboardInterrupt:
        print(f"\ninterrupted: kong-ship stopped, work dir kept: {work}", file=sys.stderr)
        return 130
    finally:
        shipper.halt.set()
        with shipper._lock:
            proc = shipper.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if fake._server is not None:
            fake.stop()


def run(args: argparse.Namespace, seed: int, started: datetime, work: str, logdir: str, state: str, argv: list[str],
        timeline: Timeline, fake: SoakSegment, writer: Writer, faults: Faults, shipper: Shipper,
        shutdown_timeout: float) -> int:
    shipper.launch()
    writer.start()
    shipper.start()
    faults.start()
    deadline = time.monotonic() + args.minutes * 60
    last_print = 0.0
    while time.monotonic() < deadline and writer.is_alive():
        time.sleep(1.0)
        if time.monotonic() - last_print >= 30:
            last_print = time.monotonic()
            got = writer.n - fake.snapshot(writer.n).count(0)
            print(f"[{timeline.now():6.0f} s] written {writer.n:,}, delivered {got:,}, rotations "
                  f"{sum(writer.rotations.values())}, restarts {sum(shipper.restarts.values())}, faults "
                  f"{sum(faults.windows.values())}", file=sys.stderr, flush=True)  # fmt: skip

    # -- the end: no more chaos, deliver the rest --------------------------------------------------------------
    timeline.add("chaos:end")
    faults.end()
    shipper.chaos.clear()
    writer.end()
    written = writer.n
    with shipper._lock:  # not in the middle of a restart
        if shipper.proc is None:
            shipper.launch()
    drain_started = time.monotonic()
    drained = False
    while time.monotonic() - drain_started < args.drain_timeout:
        if fake.snapshot(written).count(0) == 0:
            drained = True
            break
        time.sleep(0.2)
    drain_seconds = time.monotonic() - drain_started
    timeline.add("drain:end", f"{'all delivered' if drained else 'TIMED OUT'} after {drain_seconds:.1f} s")
    time.sleep(1.0)  # a last checkpoint save
    shipper.end()
    final_exit = shipper.stop_process(signal.SIGTERM, "final SIGTERM", shutdown_timeout + 10)
    fake.stop()

    # -- the accounting --------------------------------------------------------------------------------------------
    counts = fake.snapshot(written)
    delivered = written - counts.count(0)
    deliveries = sum(counts)  # saturates at 255 per record; far beyond anything seen
    duplicated = deliveries - delivered
    doubled_records = delivered - counts.count(1)
    lost_seqs = [s for s in range(written) if counts[s] == 0]
    beyond = sum(1 for b in fake.seen[written:] if b)
    latencies = sorted(fake.first_at[s] - timeline.t0 - writer.loc_time[s] for s in range(written) if counts[s])
    dead_letter_path = os.path.join(state, "dead-letter.jsonl")
    dead_letters = sum(1 for _ in open(dead_letter_path, "rb")) if os.path.exists(dead_letter_path) else 0
    peak_rss = max(shipper.hwm_kib.values(), default=0) / 1024

    lost_detail = []
    for first, last in runs_of(lost_seqs)[:50]:
        fno = writer.loc_file[first]
        info = writer.files[fno]
        name = info["name"]
        t_first, t_last = writer.loc_time[first], writer.loc_time[last]
        lost_detail.append({
            "seqs": [first, last], "count": last - first + 1,
            "file": name, "file_history": info["how"], "file_created_t": info["created"],
            "file_deleted_t": info.get("deleted"),
            "offsets": [writer.loc_off[first], writer.loc_off[last]],
            "kinds": sorted({Writer.KIND_NAMES[writer.loc_kind[s]] for s in range(first, last + 1)}),
            "same_file_for_all": all(writer.loc_file[s] == fno for s in range(first, last + 1)),
            "written_t": [round(t_first, 3), round(t_last, 3)],
            "on_disk": line_on_disk(logdir, name, writer.loc_off[first], first) if "deleted" not in info else "deleted",
            "file_facts": checkpoint_facts(logdir, state, name) if "deleted" not in info else None,
            "around": timeline.around(t_first, t_last),
        })  # fmt: skip

    # The largest runs of records delivered more than once, with what happened around them: resends should
    # follow a kill -9, a shutdown cut short, a hung reply or a copytruncate, and nothing else.
    dup_runs = sorted(runs_of([s for s in range(written) if counts[s] > 1]), key=lambda r: r[0] - r[1])[:10]
    dup_detail = [{
        "seqs": [a, b], "count": b - a + 1, "max_copies": max(counts[a : b + 1]),
        "file": writer.files[writer.loc_file[a]]["name"], "file_history": writer.files[writer.loc_file[a]]["how"],
        "written_t": [round(writer.loc_time[a], 3), round(writer.loc_time[b], 3)],
        "events": [e for e in timeline.events if writer.loc_time[a] - 2 <= e[0] <= writer.loc_time[b] + 15
                   and not e[1].endswith(":end")][:12],
    } for a, b in dup_runs]  # fmt: skip

    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "seed": seed,
        "minutes": args.minutes,
        "rate": args.rate,
        "shipper_argv": [os.path.basename(argv[0]), *argv[1:]],
        "written": written,
        "delivered": delivered,
        "deliveries": deliveries,
        "duplicated": duplicated,
        "records_delivered_more_than_once": doubled_records,
        "duplicates_kept_message_id": not fake.id_mismatches,
        "message_id_mismatches": fake.id_mismatches[:20],
        "message_id_mismatch_count": len(fake.id_mismatches),
        "message_id_not_request_id": fake.id_unexpected[:20],
        "largest_duplicate_runs": dup_detail,
        "lost": len(lost_seqs),
        "lost_runs": lost_detail,
        "unexpected_records": fake.unexpected + beyond,
        "fake_errors": fake.errors[:20],
        "dead_letters": dead_letters,
        "drained": drained,
        "drain_seconds": round(drain_seconds, 1),
        "final_exit": final_exit,
        "append_to_first_delivery_s": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                                       "max": latencies[-1] if latencies else None},
        "restarts": dict(shipper.restarts),
        "instances": shipper.instances,
        "exits": shipper.exits,
        "unexpected_exits": shipper.unexpected,
        "faults": {"started": dict(faults.windows), "scripted_requests": dict(faults.scripted),
                   "scripted_unused_at_end": faults.unused,
                   "requests_answered_503_429": dict(fake.faulted),
                   "seconds_down": {k: round(v, 1) for k, v in faults.seconds.items()}, "error": faults.error},
        "rotations": dict(writer.rotations),
        "late_lines": writer.late_lines,
        "straggler_lines": writer.straggler_lines,
        "writer_worst_lag_s": round(writer.worst_lag, 3),
        "writer_error": writer.error,
        "peak_rss_mib": round(peak_rss, 1),
        "peak_rss_mib_per_instance": sorted(round(v / 1024, 1) for v in shipper.hwm_kib.values())[-5:],
        "requests": fake.request_count,
        "batches_accepted": fake.batches,
        "shipper_stderr": stderr_notes(shipper.stderr_paths),
        "timeline": timeline.events,
        "work_dir": work,
    }
    ok = (not lost_seqs and not fake.id_mismatches and not fake.id_unexpected and not fake.errors
          and not report["unexpected_records"] and writer.error is None)  # fmt: skip
    report["ok"] = ok
    anomalies = [f"instance {e['instance']}: {e['how']} → exit {e['exit']} (expected 0)"
                 for e in shipper.exits if "SIGTERM" in e["how"] and e["exit"] != 0]
    anomalies += [f"instance {u['instance']} exited by itself with {u['exit']}" for u in shipper.unexpected]
    anomalies += [f"kong-ship printed a traceback ({t.splitlines()[0].split(':')[0]}): {t.strip().splitlines()[-1]}"
                  for t in report["shipper_stderr"]["tracebacks"]]
    anomalies += [f"{what}" for what, bad in (("not drained in time", not drained), (f"writer: {writer.error}", writer.error),
                                             (f"faults: {faults.error}", faults.error)) if bad]
    report["anomalies"] = anomalies

    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"soak-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2, default=str)

    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    rows = [
        ("written", f"{written:,}"),
        ("delivered (distinct)", f"{delivered:,}"),
        ("duplicated", f"{duplicated:,} extra deliveries of {doubled_records:,} records; messageId kept: "
                       f"{'yes' if not fake.id_mismatches else f'NO ({len(fake.id_mismatches)} changed)'}"),
        ("lost", f"{len(lost_seqs):,}"),
        ("dead-lettered / unexpected / fake refusals", f"{dead_letters} / {report['unexpected_records']} / {len(fake.errors)}"),
        ("restarts", kv(dict(shipper.restarts)) + f" ({shipper.instances} processes); exit codes: "
                     + kv(dict(collections.Counter(f"{e['how']}→{e['exit']}" for e in shipper.exits)))),
        ("faults", kv(dict(faults.windows)) + f"; requests faulted: {kv(dict(fake.faulted))}, scripted {kv(dict(faults.scripted))}"),
        ("rotations", kv(dict(writer.rotations)) + f"; {writer.late_lines} late + {writer.straggler_lines} straggler lines"),
        ("peak RSS of kong-ship (VmHWM)", f"{peak_rss:.1f} MiB"),
        ("append → first delivery", "p50 {} s, p99 {} s, max {} s".format(
            *(f"{v:.2f}" if v is not None else "n/a" for v in report["append_to_first_delivery_s"].values()))),
        ("drain at the end", f"{drain_seconds:.1f} s ({'all delivered' if drained else 'timed out'}); final exit {final_exit}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"\nkong-ship soak, {args.minutes:g} min, seed {seed}, {args.rate:g} lines/s, {started.isoformat(timespec='seconds')}")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    if lost_detail:
        print("\nLOST records (first runs):")
        for d in lost_detail[:10]:
            print(f"  seq {d['seqs'][0]}..{d['seqs'][1]} ({d['count']}) in {d['file']} at offsets {d['offsets']}, "
                  f"{', '.join(d['kinds'])}, written at t={d['written_t'][0]} s; on disk: {d['on_disk']}")
    if anomalies:
        print("\nANOMALIES (no record lost by them, but worth a look; details in the JSON):")
        for a in anomalies:
            print(f"  - {a}")
    print(f"\nfigures: {out}")
    if ok and not anomalies and not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
