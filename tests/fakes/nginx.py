"""A real nginx writing the `kongship` escape=json access log, for end-to-end tests of the Nginx source.

    with NginxServer(tmp_path) as ng:
        ng.request("/orders/1?seq=5", headers={"Authorization": "Bearer ..."})
        ng.request(ng.bad_gateway_path)          # 502 with upstream fields filled
        ng.wait_logged(2)                        # -> the two parsed log records
        os.rename(ng.access_log_path, ...); ng.reopen_logs()   # rotation

One process (master_process off): it never drops privileges, so running as root needs no `user` directive and
every file it touches stays inside the temp dir.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from .httpfake import wait_until

APT_PACKAGE = "nginx-light"

# Kept identical to /work/shared/samples/nginx-log-format.conf.
LOG_FORMAT = (
    """log_format kongship escape=json '{"time":"$time_iso8601","msec":"$msec","remote_addr":"$remote_addr",'"""
    """
    '"request_method":"$request_method","request_uri":"$request_uri","uri":"$uri","args":"$args",'
    '"status":"$status","body_bytes_sent":"$body_bytes_sent","request_length":"$request_length",'
    '"request_time":"$request_time","upstream_response_time":"$upstream_response_time",'
    '"upstream_addr":"$upstream_addr","http_user_agent":"$http_user_agent","http_referer":"$http_referer",'
    '"http_authorization":"$http_authorization","host":"$host","scheme":"$scheme",'
    '"server_port":"$server_port","request_id":"$request_id"}';"""
)


def nginx_available() -> str | None:
    """The nginx binary's path, or None when nginx is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPResult(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class NginxServer:
    bad_gateway_path = "/upstream-down"  # proxied to a closed port: 502, with $upstream_addr filled

    def __init__(self, tmp_path: str | os.PathLike, *, access_log_name: str = "access.json") -> None:
        binary = nginx_available()
        if binary is None:
            raise RuntimeError(f"nginx is not installed (apt-get install -y {APT_PACKAGE})")
        self.binary = binary
        self.dir = Path(tmp_path) / "nginx"
        self.access_log_path = self.dir / access_log_name
        self.error_log_path = self.dir / "error.log"
        self.conf_path = self.dir / "nginx.conf"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, closed_port: int) -> str:
        d = self.dir
        temp_paths = "\n".join(
            f"    {kind}_temp_path {d / 'tmp' / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {d / 'nginx.pid'};
error_log {self.error_log_path} warn;
events {{ worker_connections 256; }}
http {{
    default_type text/plain;
{temp_paths}
    {LOG_FORMAT}
    access_log {self.access_log_path} kongship;
    server {{
        listen 127.0.0.1:{self.port};
        server_name localhost;
        location / {{ return 200 "ok\\n"; }}
        location {self.bad_gateway_path} {{
            proxy_pass http://127.0.0.1:{closed_port};
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""

    def start(self) -> NginxServer:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        # A free port can be taken between probing and nginx's bind; try a few.
        for _ in range(5):
            self.port = _free_port()
            self.conf_path.write_text(self._config(_free_port()))
            # stderr to a file, not a pipe nobody drains (a full pipe would block nginx).
            with open(self.dir / "stderr.log", "wb") as stderr:
                self.proc = subprocess.Popen(
                    [self.binary, "-p", str(self.dir), "-c", str(self.conf_path), "-e", str(self.error_log_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            try:
                wait_until(lambda: self.proc.poll() is not None or self._accepting(), timeout=10, what="nginx up")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            stderr = (self.dir / "stderr.log").read_text(errors="replace") + self._error_log()
            if "Address already in use" not in stderr:
                raise RuntimeError(f"nginx failed to start (exit {self.proc.returncode}):\n{stderr}")
        raise RuntimeError("nginx: no free port after 5 attempts")

    def _accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None
    ) -> HTTPResult:
        """One request on a fresh connection; returns once nginx has answered (its log line is written just
        after the reply, so use wait_logged before reading the log)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return HTTPResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def reopen_logs(self) -> None:
        """SIGUSR1: nginx reopens its logs (what logrotate's postrotate does). Returns at once; nginx acts at
        its next event-loop turn, so wait for the new file (or the next line) rather than assume it exists."""
        assert self.proc is not None and self.proc.poll() is None, "nginx is not running"
        self.proc.send_signal(signal.SIGUSR1)

    def lines(self, path: str | os.PathLike | None = None) -> list[bytes]:
        """The complete (newline-terminated) lines of the access log (or of `path`, e.g. a rotated file)."""
        try:
            data = Path(path or self.access_log_path).read_bytes()
        except FileNotFoundError:
            return []
        return data.split(b"\n")[:-1]

    def records(self, path: str | os.PathLike | None = None) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.lines(path)]

    def wait_logged(self, n: int, timeout: float = 5.0) -> list[dict[str, str]]:
        """Wait until the access log holds at least n lines; returns the parsed records."""
        wait_until(lambda: len(self.lines()) >= n, timeout=timeout, what=f"{n} lines in {self.access_log_path}")
        return self.records()
