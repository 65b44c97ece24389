"""Round 5 of "no secret leaves": places a real deployment puts a secret that the earlier rounds' records did not,
each with a unique marker, through the real commands (`backfill` to every sink at once with the debug log in text
and JSON, `parse`, `receive` of Kong's http-log with its spool), every byte that left scanned (vendors' bodies
decompressed, base64 inside them decoded, stdout, stderr, every file of the state directory):

- names in camelCase (`accessToken`, `clientSecret`, `refreshToken`) in the query and in JSON and form bodies;
- a GraphQL document's secret arguments written inline (`login(password: "…")`);
- JSON as a form or query value (Slack's `payload=%7B%22token%22…`), names with spaces (`"API Key"`);
- a JSON Web Token under a name no mask knows (`X-Goog-Iap-Jwt-Assertion`, `?assertion=`, `{"assertion": …}`);
- a target or URL in a header of any name (`X-Forwarded-Uri: /x?api_key=…`, `Link: <…?access_token=…>`);
- the Authorization header forwarded or renamed (`X-Forwarded-Authorization`, `X-Amzn-Remapped-Authorization`);
- a secret path parameter (`/orders;token=…/items`), in the `path` field (the raw path was masked);
- a password in the URL of a kept JWT claim (`iss`);
- an API key sent as an HTTP Basic user name with an empty password (`curl -u sk_live_…:`), which became userId;
- userinfo in the Host header (`Host: user:password@api…`)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import httpx
import orjson

import gen
from conftest import FAST, every_byte_under, ship, ship_env
from fakes.moesif import FakeMoesif
from fakes.runscope import FakeRunscope
from fakes.segment import FakeSegment
from fakes.webhook import FakeWebhook
from receiving import free_port, start_receive
from test_masking import readable

TOKEN = "http-log-token-r5"
ENV = ship_env(SEGMENT_WRITE_KEY="test-key", MOESIF_APPLICATION_ID="moesif-app", RUNSCOPE_ACCESS_TOKEN="runscope-token",
               RUNSCOPE_BUCKET_KEY="bucket1", KONG_SHIP_HTTP_LOG_TOKEN=TOKEN)  # fmt: skip


class Markers:
    def __init__(self) -> None:
        self.all: list[str] = []

    def __call__(self) -> str:
        marker = f"R5SECRET{len(self.all):04d}Q"
        self.all.append(marker)
        return marker


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


def kong_records(m: Markers) -> list[dict[str, Any]]:
    """Kong 3.x records, one shape each (so a leak names its shape by its marker)."""
    records = []

    def record(seq: int) -> dict[str, Any]:
        rec = gen.kong_record(seq, version="3")
        records.append(rec)
        return rec

    for name in ("accessToken", "refreshToken", "clientSecret", "authToken"):  # camelCase query names
        rec = record(len(records))
        part = f"{name}={m()}"
        rec["request"]["uri"] += "&" + part
        rec["request"]["url"] += "&" + part
        rec["request"]["querystring"][name] = part.partition("=")[2]
        rec["upstream_uri"] = rec["request"]["uri"]
    rec = record(len(records))  # camelCase body keys: JSON, JSON text, form
    rec["request"]["body"] = {"auth": {"refreshToken": m(), "clientSecret": m()}, "n": 1}
    rec["response"]["body"] = json.dumps({"data": {"sessionToken": m(), "expiresIn": 3600}})
    rec = record(len(records))
    rec["request"]["body"] = f"user=a&newPassword={m()}&apiSecret={m()}&passphrase={m()}&key_passphrase={m()}"
    rec = record(len(records))  # JSON as a form or query value (Slack's `payload=`), names with spaces
    rec["request"]["body"] = "payload=" + quote_plus(json.dumps({"type": "block_actions", "token": m(), "n": 1}))
    rec["response"]["body"] = {"Api Key": m(), "Access Token": m()}
    part = "filter=" + quote_plus(json.dumps({"owner": "me", "apiKey": m()}))
    rec["request"]["uri"] += "&" + part
    rec["request"]["url"] += "&" + part
    rec["request"]["querystring"]["filter"] = unquote_plus(part.partition("=")[2])
    rec = record(len(records))  # GraphQL: secret arguments written inline in the document
    rec["request"]["body"] = {"query": f'mutation {{ login(email: "a@example.com", password: "{m()}") {{ token }} }}',
                              "variables": {}}
    rec["response"]["body"] = {"query": f'mutation{{signup(input:{{name:"n",newPassword:"{m()}"}}){{id}}}}'}
    rec = record(len(records))  # a JWT under names nothing else masks
    rec["request"]["headers"]["x-goog-iap-jwt-assertion"] = gen.make_jwt({"sub": "u1", "email": m()})
    rec["request"]["body"] = {"grant_type": "jwt-bearer", "assertion": gen.make_jwt({"sub": "u2", "note": m()})}
    rec = record(len(records))
    jwt = gen.make_jwt({"sub": "u3", "hint": m()})
    rec["request"]["uri"] += f"&id_token_hint={jwt}"
    rec["request"]["url"] += f"&id_token_hint={jwt}"
    rec["request"]["querystring"]["id_token_hint"] = jwt
    rec = record(len(records))  # targets and URLs in headers of any name: a proxy's, pagination links
    rec["request"]["headers"]["x-forwarded-uri"] = f"/orders?seq=1&api_key={m()}"
    rec["request"]["headers"]["x-original-url"] = [f"https://svc:{m()}@orders.internal/", "/b"]
    rec["response"]["headers"]["link"] = f'<https://{gen.HOST}/orders?page=2&access_token={m()}>; rel="next"'
    rec = record(len(records))  # Authorization forwarded or renamed
    rec["request"]["headers"]["x-forwarded-authorization"] = f"Bearer {m()}"
    rec["response"]["headers"]["x-amzn-remapped-authorization"] = m()
    rec = record(len(records))  # a secret path parameter
    rec["request"]["uri"] = f"/orders;token={m()}/items?seq={len(records) - 1}"
    rec["request"]["url"] = f"https://{gen.HOST}:443" + rec["request"]["uri"]
    rec["upstream_uri"] = rec["request"]["uri"]
    rec = record(len(records))  # a password in a kept claim's URL
    rec["jwt"] = gen.make_jwt({"sub": "u4", "iss": f"https://issuer:{m()}@auth.example.com/"})
    rec = record(len(records))  # a key as a Basic user name, userinfo in the Host header
    rec["request"]["headers"]["authorization"] = basic(f"sk_live_{m()}:")
    rec["request"]["headers"]["host"] = f"bob:{m()}@{gen.HOST}"
    return records


def nginx_records(m: Markers) -> list[dict[str, str]]:
    rec = gen.nginx_record(900)
    rec["request_uri"] = f"/orders;token={m()}/items?seq=900&accessToken={m()}"
    rec["http_x_forwarded_authorization"] = f"Bearer {m()}"
    rec["http_authorization"] = basic(f"{m()}:")
    rec["request_body"] = json.dumps({"clientSecret": m()})
    return [rec]


def scan(markers: list[str], where: str, data: bytes) -> list[str]:
    text = readable(data)
    return [f"{marker} in {where}" for marker in markers if marker in text]


def write_log(path, m: Markers) -> int:
    kong, nginx = kong_records(m), nginx_records(m)
    path.write_bytes(b"".join(gen.kong_line(r) for r in kong) + b"".join(gen.nginx_line(r) for r in nginx))
    return len(kong) + len(nginx)


def test_backfill_to_every_sink_with_the_debug_log_leaves_no_marker(tmp_path):
    m = Markers()
    log = tmp_path / "kong.json"
    count = write_log(log, m)
    found = []
    for log_format in ("text", "json"):
        state = tmp_path / f"state-{log_format}"
        with FakeSegment() as segment, FakeMoesif() as moesif, FakeRunscope() as runscope, FakeWebhook() as webhook:
            result = ship(
                "backfill", str(log), "--state-dir", str(state), "--log-level", "debug", "--log-format", log_format,
                *FAST, "--sink", "segment", "--sink", "moesif", "--sink", "runscope", "--sink", "webhook",
                "--sink", "stdout", "--endpoint", f"segment={segment.url}", "--endpoint", f"moesif={moesif.url}",
                "--endpoint", f"runscope={runscope.url}", "--endpoint", f"webhook={webhook.url}/hook",
                "--runscope-log-body", env=ENV, timeout=60,
            )
            assert result.returncode == 0, result.stderr.decode()[-3000:]
            fakes = {"segment": segment, "moesif": moesif, "runscope": runscope, "webhook": webhook}
            # Not vacuous: every record reached every vendor.
            assert len(segment.messages) == len(moesif.events) == len(runscope.messages) == count
            assert len(webhook.events) == count and result.stdout.count(b"\n") == count
            for name, fake in fakes.items():
                for request in fake.requests:
                    body = request.body
                    if request.headers.get("content-encoding") == "gzip":
                        body = gzip.decompress(body)
                    found += scan(m.all, f"{name} {request.path}", request.path.encode() + b"\n" + body)
            found += scan(m.all, "stdout", result.stdout) + scan(m.all, "stderr", result.stderr)
            for path, data in every_byte_under(str(state)).items():
                found += scan(m.all, path, data)
    assert not found, (sorted({leak.split()[0] for leak in found}), found)
    # What must still ship does: the path, the claims kept, the Basic user of a real password.
    webhook_event = next(e for e in webhook.events if e["path"].startswith("/orders;"))
    assert webhook_event["path"] == "/orders;token=*****/items"


def test_parse_prints_no_marker(tmp_path):
    m = Markers()
    log = tmp_path / "kong.json"
    write_log(log, m)
    result = ship("parse", str(log), env=ENV)
    assert result.returncode == 0, result.stderr
    txns = [orjson.loads(line) for line in result.stdout.splitlines()]
    found = scan(m.all, "stdout", result.stdout) + scan(m.all, "stderr", result.stderr)
    assert not found, (sorted({leak.split()[0] for leak in found}), found)
    assert [t["user_source"] for t in txns].count("basic") == 0  # a key as a user name is nobody
    assert any(t["jwt_claims"] and t["jwt_claims"].get("iss") == "https://*****@auth.example.com/" for t in txns)


def test_a_real_basic_password_still_names_its_user(tmp_path):
    log = tmp_path / "kong.json"
    rec = gen.kong_record(1, version="3")
    rec["request"]["headers"]["authorization"] = basic("alice:s3cret-pw")
    log.write_bytes(gen.kong_line(rec))
    result = ship("parse", str(log), env=ENV)
    txn = orjson.loads(result.stdout)
    assert (txn["user_id"], txn["user_source"], txn["basic_user"]) == ("alice", "basic", "alice")
    assert b"s3cret-pw" not in result.stdout


def test_receive_spools_and_ships_kongs_http_log_records_without_a_marker(shippers, tmp_path):
    m = Markers()
    records = kong_records(m)
    port = free_port()
    state = tmp_path / "state"
    with FakeWebhook() as fake:
        proc = start_receive(shippers, [
            "--listen", f"127.0.0.1:{port}", "--sink", "webhook", "--endpoint", fake.url,
            "--state-dir", str(state), "--log-level", "debug", *FAST,
        ], ENV, port)  # fmt: skip
        answer = httpx.post(
            f"http://127.0.0.1:{port}/http-log", content=orjson.dumps(records),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}, timeout=10,
        )
        assert answer.status_code == 200, answer.text
        fake.wait_for(lambda: len(fake.events) >= len(records), timeout=20)
        spooled = every_byte_under(str(state))  # before the stop: nothing pruned yet is missed
        code, out, err = proc.stop()
        assert code == 0, err
    assert any("spool-" in path for path in spooled)
    everything = {**spooled, **every_byte_under(str(state)), "stdout": out.encode(), "stderr": err.encode(),
                  "shipped": orjson.dumps(fake.events)}  # fmt: skip
    found = [leak for where, data in everything.items() for leak in scan(m.all, where, data)]
    assert not found, (sorted({leak.split()[0] for leak in found}), found)


HOOK_SECRET = "hook-secret-r5"


def test_event_hooks_with_kongs_encrypted_plugin_fields_leave_no_marker(shippers, tmp_path):
    """Kong plugin fields that hold a credential under a name nothing else here masks (Kong stores them
    encrypted): AI Proxy's `auth.header_value` and `auth.param_value` (the LLM provider's API key), SAML's
    `response_encryption_key`, AI Azure Content Safety's `content_safety_key`. Also camelCase in an entity."""
    m = Markers()
    event = {
        "operation": "create", "schema": "plugins", "event": "plugins", "source": "crud",
        "entity": {"id": "p1", "name": "ai-proxy", "config": {
            "auth": {"header_name": "Authorization", "header_value": f"Bearer {m()}",
                     "param_name": "key", "param_value": m(), "param_location": "query"},
            "model": {"provider": "openai", "name": "gpt-4o"},
            "embeddings": {"auth": {"header_name": "api-key", "header_value": m()}},
            "response_encryption_key": m(), "content_safety_key": m(), "webhookSecret": m(),
        }},
    }  # fmt: skip
    body = orjson.dumps([event])
    port = free_port()
    state = tmp_path / "state"
    env = {**ENV, "KONG_SHIP_RECEIVE_SECRET": HOOK_SECRET}
    from fakes.webhook import kong_signature

    with FakeWebhook() as fake:
        proc = start_receive(shippers, [
            "--listen", f"127.0.0.1:{port}", "--sink", "webhook", "--endpoint", fake.url,
            "--state-dir", str(state), "--log-level", "debug", *FAST,
        ], env, port)  # fmt: skip
        answer = httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Kong-Signature": kong_signature(HOOK_SECRET.encode(), body)})
        assert answer.status_code == 200, answer.text
        fake.wait_for(lambda: fake.events, timeout=20)
        spooled = every_byte_under(str(state))
        code, out, err = proc.stop()
        assert code == 0, err
    everything = {**spooled, **every_byte_under(str(state)), "stdout": out.encode(), "stderr": err.encode(),
                  "shipped": orjson.dumps(fake.events)}  # fmt: skip
    found = [leak for where, data in everything.items() for leak in scan(m.all, where, data)]
    assert not found, (sorted({leak.split()[0] for leak in found}), found)
    config = fake.events[0]["details"]["entity"]["config"]
    assert config["auth"]["header_name"] == "Authorization" and config["model"]["name"] == "gpt-4o"


def test_a_webhook_answer_quoting_the_endpoints_secret_path_is_masked(tmp_path):
    """A Slack-style webhook URL is a credential in its path (messages show only `https://host/services/…`); an
    answer that quotes the URL back ("Cannot POST /services/T0/B0/…") goes into the dead letter's detail and the
    log: masked there too, as the sink's own credentials are."""
    path_secret, query_secret = "R5HOOKPATH0001Q", "R5HOOKQUERY0002Q"
    log = tmp_path / "kong.json"
    gen.write_records(log, range(2))
    state = tmp_path / "state"
    with FakeWebhook() as fake:
        echo = {"error": f"cannot accept POST /services/T0/B0/{path_secret}?token={query_secret}"}
        fake.script([(400, {}, echo)] * 4)
        result = ship("backfill", str(log), "--state-dir", str(state), "--sink", "webhook", "--log-level", "debug",
                      "--endpoint", f"{fake.url}/services/T0/B0/{path_secret}?token={query_secret}", *FAST, env=ENV)
        assert len(fake.requests) >= 1
    everything = {**every_byte_under(str(state)), "stdout": result.stdout, "stderr": result.stderr}
    found = [leak for where, data in everything.items() for leak in scan([path_secret, query_secret], where, data)]
    assert not found, found
    dead = [orjson.loads(line) for line in (state / "dead-letter.jsonl").read_bytes().splitlines()]
    assert dead and all(d["reason"] == "rejected" and "cannot accept POST /services/" in d["detail"] for d in dead)


def test_a_traceback_in_the_debug_log_is_masked_as_its_message(tmp_path):
    """A dying thread's traceback goes to the debug log (threads.death_notice); its last line is the exception's
    message, which may quote the record it was working on. Run in a real process through the real logging setup,
    text and JSON."""
    import subprocess
    import sys

    program = (
        "import logging\n"
        "from shipper.commands.running import setup_logging\n"
        "setup_logging('debug', FORMAT)\n"
        "try:\n"
        "    raise ValueError('cannot encode {\"Authorization\": \"Bearer R5TRACE0001Q\", \"x\": \"api_key=R5TRACE0002Q\"}')\n"
        "except ValueError as exc:\n"
        "    logging.getLogger('kong-ship').debug('thread %s died', 'lane-1', exc_info=exc)\n"
    )  # fmt: skip
    for log_format in ("text", "json"):
        result = subprocess.run([sys.executable, "-c", program.replace("FORMAT", repr(log_format))],
                                capture_output=True, env=ENV, timeout=30)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert b"thread lane-1 died" in result.stderr
        assert b"R5TRACE" not in result.stdout + result.stderr, result.stderr
    assert b"Traceback" in subprocess.run([sys.executable, "-c", program.replace("FORMAT", "'text'")],
                                          capture_output=True, env=ENV, timeout=30).stderr  # fmt: skip
