"""Sends batches to a sink with retries (tenacity), splitting refused batches to isolate the bad event.

The rules, the same for every vendor: retry network errors, timeouts, 408, 429 and 5xx for as long as it takes
(the log file keeps the data; `give_up_after` seconds without a delivery, if set, end the run as fatal),
honouring `Retry-After`, else exponential backoff with full jitter; split a batch the vendor refuses as a whole
(400/413) until the offending event stands alone, then dead-letter it with the vendor's answer; stop the shipper
on a fatal answer (401/403).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

import httpx
import tenacity

from shipper.deadletter import DeadLetter, Unwritten
from shipper.delivery.acks import AckTracker
from shipper.delivery.closed import ClosedBatch, Item
from shipper.delivery.deadline import Attempt, with_deadlines
from shipper.delivery.ratelimit import TokenBucket
from shipper.delivery.trust import tls_context
from shipper.sinks.base import FATAL, OK, REJECT, RETRY, SPLIT, Sink, Verdict
from shipper.sinks.compression import PreparedBody

log = logging.getLogger("kong-ship")

RETRY_AFTER_CAP = 3600.0  # a vendor asking for more than an hour is more likely wrong than right
RETRY_SAY_EVERY = 60.0  # seconds between the lines that say a sink is still retrying
ANSWER_BYTES = 65_536  # of an answer's body read at most: enough for any vendor's error message
# The slowest a vendor may take our request body, bytes a second, beyond the write timeout: an attempt's deadline
# grows by its body's size at this rate. An honest uplink slower than a batch's write timeout (a 1 MB Moesif body
# over a 2 s write timeout) must not be cut on every attempt and retried for ever; one reading a few bytes at a
# time is still cut, at most that long later (a 1 MB body: a minute).
MIN_UPLOAD_RATE = 16_384


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def bounded_answer(response: httpx.Response, deadline: float) -> httpx.Response:
    """The answer as judged: its status and headers, and at most ANSWER_BYTES of its body, read until `deadline`
    (time.monotonic()). The status line is the vendor's decision; a body that never ends, comes a byte at a time
    (each byte resets the read timeout) or is cut short is no reason to hold the batch, fill memory or send it
    again. A body still compressed is judged without its text."""
    try:
        response.content  # a transport's own answer (the stdout sink's), read already
        return response
    except httpx.ResponseNotRead:
        pass
    kept = bytearray()
    try:
        for chunk in response.iter_raw():
            kept += chunk
            if len(kept) >= ANSWER_BYTES or time.monotonic() >= deadline:
                break
    except httpx.HTTPError:
        pass  # cut mid-body: the status stands
    finally:
        response.close()
    framing = {"content-length", "transfer-encoding", "content-encoding"}
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in framing]
    identity = response.headers.get("content-encoding", "identity").lower() in ("", "identity")
    body = bytes(kept[:ANSWER_BYTES]) if identity else b""
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


def attempt_seconds(timeout: httpx.Timeout) -> float:
    """An attempt's whole time: connect + write + read timeouts (70 s with --timeout 30, whose connect is 10 s).
    Each phase is given its per-operation timeout once, as a whole: a vendor that connected, took the request
    and answered each within its timeout is never cut (a tighter bound would retry a slow, honest vendor for
    ever), and one that trickles bytes to reset them is, at most that long after the attempt began."""
    read = timeout.read or 30.0
    return (timeout.connect or read) + (timeout.write or read) + read


class Aborted(Exception):
    """Shutdown ran out of time: the batch stays unacknowledged and is read again after a restart."""


class FatalDelivery(Exception):
    pass


class Sender:
    def __init__(
        self,
        sink: Sink,
        acks: AckTracker,
        dead_letter: DeadLetter,
        abort: threading.Event,
        stats: Callable[[str, int], None],
        *,
        retry_initial: float = 0.5,
        retry_max: float = 60.0,
        give_up_after: float | None = None,
        timeout: float = 30.0,
        concurrency: int = 2,
        max_rate: float | None = None,
        ca_file: str | None = None,
        min_upload_rate: float = MIN_UPLOAD_RATE,
    ):
        self.sink = sink
        self.acks = acks
        self.dead_letter = dead_letter
        self.abort = abort
        self.count = stats
        # A sink may carry its plugin's own timeouts and keep-alive (Moesif, Runscope); else the shipper's.
        limits = sink.limits
        self.client = httpx.Client(
            transport=sink.transport(),
            verify=tls_context(ca_file),
            timeout=limits.http_timeout or httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=concurrency,
                max_keepalive_connections=concurrency,
                keepalive_expiry=limits.keepalive_expiry,
            ),
        )
        with_deadlines(self.client)  # before any request, the sink's own included
        self.attempt_seconds = attempt_seconds(self.client.timeout)
        self.min_upload_rate = min_upload_rate
        # A sink with requests of its own (Moesif's /v1/config) makes them with this client: the same CAs.
        sink.use_client(self.client)
        self._backoff = tenacity.wait_random_exponential(multiplier=retry_initial, max=retry_max)
        self.give_up_after = give_up_after
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda verdict: verdict.kind == RETRY),
            wait=self._wait,
            stop=self._stop,
            sleep=self._sleep,
            before_sleep=self._note_retry,
            retry_error_callback=self._stopped,
        )
        self.limiter = TokenBucket(max_rate) if max_rate else None
        self.last_success: float | None = None
        # Told (events, seconds) after every request; the metrics endpoint sets it.
        self.observe: Callable[[int, float], object] | None = None  # its result is ignored
        # Handed (sink name, batch) once per batch while a `kong-ship tap` is attached (service/tap.py), else None.
        self.tap: Callable[[str, list[Item]], None] | None = None
        self._retrying_since: float | None = None
        self._retry_said = 0.0  # when the last "still retrying" line was written
        self._lock = threading.Lock()
        self._closed = False
        # A vendor's Retry-After is about the sink, not the batch that happened to get it: until this
        # (time.monotonic()) every slot holds its next request.
        self._paused_until = 0.0

    # -- one batch -------------------------------------------------------------------------------------------
    def deliver(self, items: list[Item] | ClosedBatch, part: bool = False) -> None:
        """Deliver a batch; acknowledges what was delivered or dead-lettered. Raises FatalDelivery. `part`: a part
        of a refused batch, sent again (the tap saw it whole)."""
        if type(items) is ClosedBatch:
            return self._deliver_closed(items)
        assert type(items) is list
        if self.tap is not None and not part:
            self.tap(self.sink.name, items)
        verdict = self._send([item[3] for item in items])
        if verdict is None:
            raise Aborted()
        if verdict.kind == OK:
            self.acks.ack_many([(f, s, e) for f, s, e, _ in items])
            self._delivered(len(items))
        elif verdict.kind in (SPLIT, REJECT):
            self._refused(items, verdict)
        else:
            raise FatalDelivery(verdict.reason)

    def _refused(self, items: list[Item], verdict: Verdict) -> None:
        """A batch the vendor refused: halved until the offending event stands alone, which is dead-lettered."""
        if len(items) > 1:
            half = len(items) // 2
            self.deliver(items[:half], part=True)
            self.deliver(items[half:], part=True)
            return
        file_id, seq, end, event = items[0]
        try:
            self.dead_letter.write("rejected", verdict.reason, sink=self.sink.name, event=event)
        except Unwritten:  # shutdown gave up on a failing disk: not acknowledged, sent again after a restart
            raise Aborted() from None
        self.acks.ack(file_id, seq, end)
        self.count("rejected", 1)

    def _deliver_closed(self, batch: ClosedBatch) -> None:
        """A batch closed in a worker: its body sent as made; acknowledged as one span. Refused, it becomes
        items again and is halved as any batch is."""
        if self.tap is not None:
            self.tap(self.sink.name, batch.items())
        verdict = self._send(batch.body)
        if verdict is None:
            raise Aborted()
        if verdict.kind == OK:
            self.acks.ack_span(*batch.span())
            self._delivered(len(batch))
        elif verdict.kind in (SPLIT, REJECT):
            self._refused(batch.items(), verdict)  # its halves at once: the whole was just refused
        else:
            raise FatalDelivery(verdict.reason)

    def _delivered(self, count: int) -> None:
        self.count("sent", count)
        self.last_success = time.time()
        if self._retrying_since is not None:
            log.info("%s: delivering again after %.0f s of retries", self.sink.name, time.monotonic() - self._retrying_since)
            self._retrying_since = None

    def _send(self, events: list[bytes] | PreparedBody) -> Verdict | None:
        try:
            # A copy per batch: a Retrying keeps per-call state, and several batches are in flight at once.
            return self._retrying.copy()(self._attempt, events)
        except Aborted:
            return None

    def _attempt(self, events: list[bytes] | PreparedBody) -> Verdict:
        # After the shutdown timeout the client is closed under our feet: a batch the batcher handed over late
        # stays unacknowledged (read again after a restart) instead of failing on a closed connection pool.
        if self.abort.is_set() or self._closed:
            raise Aborted()
        self._hold()
        if self.limiter is not None:
            wait = self.limiter.reserve(len(events))
            if wait > 0 and self.abort.wait(wait):
                raise Aborted()
        if type(events) is PreparedBody:
            request = self.sink.prepared_request(events)
        else:
            request = self.sink.request(events)  # type: ignore[arg-type]
        started = time.monotonic()
        # One deadline for the whole attempt, the answer's body included (deadline.py: httpx's are per read/write),
        # longer by the time the body takes at MIN_UPLOAD_RATE, and never past --give-up-after's end: an attempt in
        # flight then would hold the give-up for its whole time.
        body = request.headers.get("content-length")
        budget = self.attempt_seconds + (int(body) / self.min_upload_rate if body and body.isdigit() else 0.0)
        given_up_in = self._given_up_in()
        if given_up_in is not None and given_up_in < budget:
            budget = max(0.0, given_up_in)
        with Attempt(started + budget) as attempt:
            try:
                response = self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                failure = _tls_failure(exc)
                if failure is not None:  # retrying cannot make a certificate verify
                    return Verdict(FATAL, f"{self.sink.name}: the TLS certificate of {request.url.host} does not "
                                          f"verify ({failure.verify_message or failure}): pass its CA certificate "
                                          "with --ca-file")  # fmt: skip
                if attempt.timed_out(exc):
                    return Verdict(RETRY, f"{type(exc).__name__}: timed out after {round(budget, 1):g} s")
                return Verdict(RETRY, f"{type(exc).__name__}: {exc or 'connection failed'}")
            except RuntimeError:
                if self._closed or self.abort.is_set():  # httpx: "the client has been closed"
                    raise Aborted() from None
                raise
            finally:
                self.count("attempted", len(events))
                if self.observe is not None:
                    self.observe(len(events), time.monotonic() - started)
            answer = bounded_answer(response, started + (self.client.timeout.read or 30.0))
        return self.sink.judge(answer)

    # -- tenacity hooks ----------------------------------------------------------------------------------------
    def _wait(self, state: tenacity.RetryCallState) -> float:
        verdict: Verdict | None = state.outcome.result() if state.outcome else None
        if verdict is not None and verdict.retry_after is not None:
            wait = min(verdict.retry_after, RETRY_AFTER_CAP)
            with self._lock:
                self._paused_until = max(self._paused_until, time.monotonic() + wait)
        else:
            wait = self._backoff(state)
        left = self._given_up_in()
        return wait if left is None else max(0.0, min(wait, left))  # give up on time, not a wait later

    def _given_up_in(self) -> float | None:
        """Seconds left before --give-up-after stops the retries (None: no limit, or not retrying)."""
        since = self._retrying_since
        if self.give_up_after is None or since is None:
            return None
        return since + self.give_up_after - time.monotonic()

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        left = self._given_up_in()
        return self.abort.is_set() or (left is not None and left <= 0)

    def _stopped(self, state: tenacity.RetryCallState) -> Verdict | None:
        """What retrying ends with: None (Aborted) at shutdown, a fatal verdict once --give-up-after ran out."""
        if self.abort.is_set():
            return None
        verdict = state.outcome.result() if state.outcome else None
        return Verdict(FATAL, f"{self.sink.name}: nothing delivered for {self.give_up_after:g} s of retries (last: "
                              f"{verdict.reason if verdict else '?'}): giving up (--give-up-after)")

    def _hold(self) -> None:
        """Wait out a pause the vendor asked for (Retry-After) on any slot's request."""
        while True:
            with self._lock:
                remaining = self._paused_until - time.monotonic()
            if remaining <= 0:
                return
            if self.abort.wait(remaining):
                raise Aborted()

    def _sleep(self, seconds: float) -> None:
        if self.abort.wait(seconds):
            raise Aborted()

    def _note_retry(self, state: tenacity.RetryCallState) -> None:
        self.count("retries", 1)
        verdict = state.outcome.result() if state.outcome else None
        reason = verdict.reason if verdict else "?"
        wait = state.next_action.sleep if state.next_action else 0.0
        now = time.monotonic()
        with self._lock:
            first = self._retrying_since is None
            since = self._retrying_since = now if self._retrying_since is None else self._retrying_since
            # The first failure, then one line a minute while it lasts: an unreachable vendor is not silence for
            # the minutes the back-off reaches (a backfill waits for it, and says so).
            due = first or now - self._retry_said >= RETRY_SAY_EVERY
            if due:
                self._retry_said = now
        if first:
            log.warning("%s: %s; retry %d in %.1f s", self.sink.name, reason, state.attempt_number, wait)
        elif due:
            log.warning("%s: %s; still retrying after %.0f s (attempt %d), next in %.1f s", self.sink.name, reason,
                        now - since, state.attempt_number, wait)  # fmt: skip

    def close(self) -> None:
        self._closed = True
        self.client.close()
