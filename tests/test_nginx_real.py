"""A real nginx (Debian's package) writes a real `escape=json` access log with the log_format shipped in
examples/; kong-ship tails it through a rotation (rename + SIGUSR1, what logrotate does) into the fake Segment."""

from __future__ import annotations

import base64
import json
import os

import pytest

from conftest import FAST_FOLLOW, ship, ship_env
from fakes.nginx import APT_PACKAGE, NginxServer, nginx_available
from fakes.segment import FakeSegment

pytestmark = pytest.mark.skipif(
    nginx_available() is None, reason=f"nginx is not installed (apt-get install {APT_PACKAGE}); .ci/run installs it"
)


def jwt(sub: str) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'HS256'})}.{part({'sub': sub})}.sig"


def test_real_nginx_log_is_understood_masked_and_survives_rotation(tmp_path, shippers):
    with NginxServer(tmp_path / "nginx") as nginx, FakeSegment() as segment:
        for seq in range(5):
            nginx.request(f"/items/{seq}?seq={seq}&apikey=sekret-{seq}", headers={
                "Authorization": f"Bearer {jwt(f'user-{seq}')}", "User-Agent": "kong-ship-test"})
        nginx.wait_logged(5)
        proc = shippers(
            "tail", str(nginx.access_log_path), "--sink", "segment", "--endpoint", segment.url,
            "--state-dir", str(tmp_path / "state"), *FAST_FOLLOW, env=ship_env(SEGMENT_WRITE_KEY="test-key"),
        )
        segment.wait_for(lambda: len(segment.messages) >= 5, timeout=15)

        os.rename(nginx.access_log_path, f"{nginx.access_log_path}.1")
        nginx.request("/items/5?seq=5")  # written to the renamed file: nginx has not reopened yet
        nginx.reopen_logs()
        from fakes.httpfake import wait_until

        wait_until(lambda: os.path.exists(nginx.access_log_path), timeout=5, what="nginx reopened its log")
        for seq in range(6, 9):
            nginx.request(f"/items/{seq}?seq={seq}")
        segment.wait_for(lambda: len(segment.messages) >= 9, timeout=15)
        code, _, err = proc.stop()
        assert code == 0, err

    by_seq = {int(m["properties"]["queryObject"]["seq"]): m for m in segment.messages}
    assert sorted(by_seq) == list(range(9)) and len(segment.messages) == 9
    first = by_seq[0]
    assert first["userId"] == "user-0"
    assert first["properties"]["path"] == "/items/0" and first["properties"]["statusCode"] == 200
    assert first["properties"]["queryObject"]["apikey"] == "*****"
    assert first["context"]["ip"] == "127.0.0.1" and first["context"]["userAgent"] == "kong-ship-test"
    assert first["messageId"] and len({m["messageId"] for m in segment.messages}) == 9  # nginx $request_id
    text = json.dumps(segment.messages)
    assert "sekret" not in text and "Bearer" not in text
    assert "anonymousId" in by_seq[6]


def test_real_nginx_upstream_failure_fields(tmp_path):
    with NginxServer(tmp_path / "nginx") as nginx:
        result = nginx.request("/upstream-down?seq=1")
        nginx.wait_logged(1)
        out = ship("parse", str(nginx.access_log_path))
    assert result.status == 502
    (txn,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert txn["status"] == 502 and txn["source_format"] == "nginx"
    assert txn["upstream_addr"] and txn["latency_request"] is not None
