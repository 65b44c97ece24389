"""`kong-ship audit tail --dry-run`: polls a fake Admin API on loopback, prints the requests its sinks would make
(masked, credentials redacted) and sends nothing; its cursor and checkpoints are neither read nor moved. Between
two real runs, a dry run changes nothing: every byte of the state directory is as it was, and the next real run
ships exactly the records that were new, once."""

from __future__ import annotations

import collections
import json

import orjson

from conftest import FAST, every_byte_under, ship, ship_env
from fakes.kong_admin import FakeKongAdmin
from fakes.segment import FakeSegment

TOKEN = "kong-admin-token-DRY-9"
WRITE_KEY = "segment-write-key-DRY-8"
T0 = 1_700_000_000
ENV = ship_env(SEGMENT_WRITE_KEY=WRITE_KEY)






def test_audit_tail_dry_run_prints_everything_moves_nothing(tmp_path, nobody):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    state, scratch = tmp_path / "state", tmp_path / "tmp"
    scratch.mkdir()
    password = "AUDIT-PASSWORD-DRY-7"

    def tail(endpoint: str, *more: str):
        return ship("audit", "tail", "--admin-url", admin.url, "--admin-token-file", str(token_file), "--sink",
                    "segment", "--endpoint", endpoint, "--state-dir", str(state), "--once", *FAST, *more,
                    env={**ENV, "TMPDIR": str(scratch)})

    with FakeKongAdmin(TOKEN, private_key=None) as admin, FakeSegment(write_key=WRITE_KEY) as segment:
        first = [admin.add_request(T0 + i, signed=False, rbac_user_id="admin-1") for i in range(3)]
        real = tail(segment.url)
        assert real.returncode == 0, real.stderr.decode()
        assert len(segment.messages) == 3
        before = every_byte_under(state)
        assert any(path.endswith("cursor.json") for path in before)

        more = [admin.add_request(T0 + 10, signed=False, payload=json.dumps({"password": password}))]
        more.append(admin.add_object(T0 + 11, signed=False))
        dry = tail(nobody, "--dry-run")
        assert dry.returncode == 0, dry.stderr.decode()
        # Printed: every record of the audit log (its cursor is not read), masked, the write key redacted.
        printed = [orjson.loads(line) for line in dry.stdout.splitlines()]
        assert printed and all(p["sink"] == "segment" and p["method"] == "POST" for p in printed)
        assert all(p["headers"]["authorization"] == "[redacted]" for p in printed)
        batch = [event for p in printed for event in p["body"]["batch"]]
        assert collections.Counter(e["event"] for e in batch) == {"Kong Admin Request": 4, "Kong Config Change": 1}
        assert password.encode() not in dry.stdout and WRITE_KEY.encode() not in dry.stdout + dry.stderr
        assert TOKEN.encode() not in dry.stdout + dry.stderr
        assert b"dry run: " in dry.stderr and b"none sent" in dry.stderr
        # Moved nothing: the state directory is byte for byte what the real run left; the throwaway one is gone.
        assert every_byte_under(state) == before
        assert not any(scratch.iterdir())
        assert len(segment.messages) == 3

        again = tail(segment.url)
        assert again.returncode == 0, again.stderr.decode()
    ids = collections.Counter(m["messageId"] for m in segment.messages)
    assert len(ids) == 5 and max(ids.values()) == 1  # the two new records, shipped once, and nothing twice
    assert len(first) + len(more) == 5
