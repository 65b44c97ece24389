"""`kong-ship audit tail` masks audit records with the user's own secret names (`--mask-header`, `--mask-query`,
`--mask-body-key`), not only the default ones, before anything leaves the process: the spool, checkpoints, cursor
and dead letters on disk, what the vendor receives, and what `--dry-run` prints. Signatures are still checked
over the records as Kong signed them. Real processes against a fake Admin API and a fake Segment on loopback."""

from __future__ import annotations

import collections
import json
import re

import orjson
import pytest

from conftest import every_byte_under, ship
from fakes.kong_admin import FakeKongAdmin
from fakes.segment import FakeSegment
from shipper.processors.masking import Masker
from test_audit import T0, TOKEN, env, keys, one_line, tail_args, token_file  # noqa: F401 - keys, token_file: fixtures

# Unique markers under names that are no default secret name: only the user's options can mask them.
PIN = "PIN-AUDIT-MASK-4c1e9b"  # a body key inside a request's `payload` (JSON)
SEED = "SEED-AUDIT-MASK-77d0aa"  # a field of an object's `entity`
SIG = "SIG-AUDIT-MASK-0b3f52"  # a query parameter in a request's `path`
PARTNER = "PARTNER-AUDIT-MASK-e5a6"  # named like a header; audit records carry none, so in a form `payload`
TAMPERED = "PIN-AUDIT-MASK-TAMPERED-91"  # in a record that fails --verify-key: dead-lettered, never shipped
MARKERS = (PIN, SEED, SIG, PARTNER, TAMPERED)
MASKS = ("--mask-body-key", "internal_pin", "--mask-body-key", "signing_seed", "--mask-query", "sig",
         "--mask-header", "X-Partner-Key")  # fmt: skip


def add_records(admin: FakeKongAdmin) -> dict[str, list[dict]]:
    """Signed records holding every marker, and one tampered with after signing."""
    requests = [
        admin.add_request(T0, payload=json.dumps({"username": "ops", "internal_pin": PIN}), rbac_user_id="admin-1"),
        admin.add_request(T0 + 1, method="GET", path=f"/consumers?sig={SIG}&size=10", status=200),
        admin.add_request(T0 + 2, path="/partners", payload=f"name=acme&x_partner_key={PARTNER}"),
    ]
    objects = [admin.add_object(T0 + 3, dao_name="partners", entity={"id": "p1", "name": "acme", "signing_seed": SEED})]
    tampered = [admin.add_request(T0 + 4, tamper=True, payload=json.dumps({"internal_pin": TAMPERED}))]
    served = orjson.dumps(admin.audit)
    # The markers are there as Kong serves them, and the default masks alone would let each one through.
    assert all(m.encode() in served and m.encode() in orjson.dumps(Masker().mask_value(admin.audit)) for m in MARKERS)
    return {"requests": requests, "objects": objects, "tampered": tampered}


def test_audit_tail_masks_the_users_names_on_disk_and_on_the_wire(tmp_path, token_file, keys):
    private, public_pem, _ = keys
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        records = add_records(admin)
        args = tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem), *MASKS)
        result = ship(*args, env=env())
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr  # the tampered record failed verification: dead-lettered
        # Every genuine record arrives, verified: the signatures were checked before masking changed anything.
        assert collections.Counter(m["event"] for m in segment.messages) == {"Kong Admin Request": 3, "Kong Config Change": 1}
        assert collections.Counter(m["properties"]["signature"] for m in segment.messages) == {"verified": 4}
        assert "4 verified, 0 unsigned, 1 invalid" in stderr
        state = every_byte_under(tmp_path / "state")
        assert any("spool-" in path for path in state) and any(path.endswith("cursor.json") for path in state)
        dead = [p for p in state if p.endswith("dead-letter.jsonl")]
        assert len(dead) == 1 and records["tampered"][0]["request_id"].encode() in state[dead[0]]
        shipped = orjson.dumps(segment.messages)
        for marker in MARKERS:
            assert not any(marker.encode() in data for data in state.values()), marker
            assert marker.encode() not in shipped and marker not in stderr, marker
        # What stays is what is no secret: the records are masked, not withheld.
        assert b"acme" in shipped and b"size=10" in shipped and b"*****" in shipped


@pytest.mark.parametrize("given_by", ["flags", "config"])
def test_audit_tail_dry_run_prints_the_records_masked_with_the_users_names(tmp_path, token_file, keys, nobody, given_by):
    private, public_pem, _ = keys
    masks = list(MASKS)
    if given_by == "config":  # the [masks] table serves `audit tail` as it serves `tail`
        config = tmp_path / "kong-ship.toml"
        config.write_text('[masks]\nbody_keys = ["internal_pin", "signing_seed"]\nquery = ["sig"]\n'
                          'headers = ["X-Partner-Key"]\n')
        masks = ["--config", str(config)]
    with FakeKongAdmin(TOKEN, private_key=private) as admin:
        add_records(admin)
        args = tail_args(admin, nobody, tmp_path, token_file, "--once", "--verify-key", str(public_pem), "--dry-run",
                         *masks)  # fmt: skip
        result = ship(*args, env={**env(), "TMPDIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr.decode()  # the tampered record, as in a real run
    printed = [orjson.loads(line) for line in result.stdout.splitlines()]
    batch = [event for p in printed for event in p["body"]["batch"]]
    assert collections.Counter(e["event"] for e in batch) == {"Kong Admin Request": 3, "Kong Config Change": 1}
    for marker in MARKERS:
        assert marker.encode() not in result.stdout + result.stderr, marker
    assert b"*****" in result.stdout


def test_audit_tail_help_lists_the_mask_options_and_unknown_ones_still_exit_2(tmp_path):
    result = ship("audit", "tail", "--help")
    assert result.returncode == 0, result.stderr.decode()
    listed = set(re.findall(r"^\s+(--[a-z-]+)", result.stdout.decode(), re.MULTILINE))  # each option's own line
    assert {"--mask-header", "--mask-query", "--mask-body-key", "--ship-raw-bodies", "--admin-url"} <= listed
    assert not listed & {"--jwt-from", "--jwt-claim", "--format", "--nginx-field", "--max-line-bytes"}
    unknown = ship("audit", "tail", "--admin-url", "http://127.0.0.1:1", "--sink", "stdout", "--state-dir",
                   str(tmp_path), "--mask-everything", "x")  # fmt: skip
    assert unknown.returncode == 2 and "--mask-everything" in one_line(unknown.stderr)


KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIE-AUDIT-MULTIPART-KEY-3f9d\n-----END PRIVATE KEY-----"
MULTIPART = (  # `POST /certificates` as multipart/form-data: neither JSON nor a form, so no key can be found in it
    '--XyZ\r\nContent-Disposition: form-data; name="cert"\r\n\r\n-----BEGIN CERTIFICATE-----\r\n--XyZ\r\n'
    f'Content-Disposition: form-data; name="key"\r\n\r\n{KEY_PEM}\r\n--XyZ--\r\n'
)


@pytest.mark.parametrize("raw", [False, True], ids=["default", "ship-raw-bodies"])
def test_an_admin_requests_payload_is_masked_as_a_body(tmp_path, token_file, keys, raw):
    """A request's `payload` is its body: withheld when its keys cannot be inspected (a multipart upload of a
    certificate's private key), on disk and on the wire, unless --ship-raw-bodies; a form payload still masked."""
    private, public_pem, _ = keys
    marker = "MIIE-AUDIT-MULTIPART-KEY-3f9d"
    with FakeKongAdmin(TOKEN, private_key=private) as admin, FakeSegment() as segment:
        admin.add_request(T0, path="/certificates", payload=MULTIPART)
        admin.add_request(T0 + 1, path="/consumers", payload="username=ops&password=FORM-PW-AUDIT-51c2")
        args = tail_args(admin, segment.url, tmp_path, token_file, "--once", "--verify-key", str(public_pem),
                         *(["--ship-raw-bodies"] if raw else []))  # fmt: skip
        result = ship(*args, env=env())
        assert result.returncode == 0, result.stderr.decode()
        assert collections.Counter(m["properties"]["signature"] for m in segment.messages) == {"verified": 2}
        shipped = orjson.dumps(segment.messages)
        on_disk = b"".join(every_byte_under(tmp_path / "state").values())
    assert b"FORM-PW-AUDIT-51c2" not in shipped + on_disk  # a form payload: masked by key either way
    if raw:
        assert marker.encode() in shipped  # asked for: sent as it is
    else:
        assert marker.encode() not in shipped + on_disk
        assert b"body withheld by kong-ship" in shipped
