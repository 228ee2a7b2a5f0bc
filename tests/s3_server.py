"""A real S3 API on loopback for tests: moto's standalone server in a subprocess.

    with MotoS3Server() as s3:
        s3.client().create_bucket(Bucket="b")
        cfg.data.s3 = s3.s3_config()        # endpoint + credentials for simpersona's readers

Import it as `from s3_server import MotoS3Server` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

from simpersona.storage_config import S3Config

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MotoS3Server:
    """`python -m moto.server` on 127.0.0.1:<free port>; stopped (by its own pid) on exit."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def s3_config(self) -> S3Config:
        return S3Config(
            endpoint_url=self.endpoint_url, region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY
        )

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def start(self) -> MotoS3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self._output()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"moto server not up on {self.endpoint_url} after {self.start_timeout_s}s: {self._output()}"
        )

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()


class FlakyS3Proxy:
    """An HTTP proxy in front of an S3 endpoint that answers every `every`-th request itself with `status` and
    an S3 error `code` (503 SlowDown: throttling; 500 InternalError: a 5xx) and forwards the others."""

    HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}

    def __init__(self, target: MotoS3Server, every: int = 3, status: int = 503, code: str = "SlowDown"):
        self.target, self.every, self.status, self.code = target, every, status, code
        self.requests = self.injected = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # how the SDK streams parts
                    out = b""
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return out
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                head = self.command == "HEAD"  # its Content-Length is the object's size, with no body
                for k, v in headers:
                    if k.lower() not in proxy.HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head or not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                with proxy.lock:
                    proxy.requests += 1
                    fail = proxy.requests % proxy.every == 0
                    proxy.injected += fail
                if fail:
                    xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{proxy.code}</Code>"
                           f"<Message>injected by the test</Message></Error>").encode()
                    self._answer(proxy.status, [("Content-Type", "application/xml")], xml)
                    return
                conn = http.client.HTTPConnection(proxy.target.host, proxy.target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP | {"content-length"}}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    self._answer(resp.status, resp.getheaders(), resp.read())
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def s3_config(self, **changes) -> S3Config:
        return replace(self.target.s3_config(), endpoint_url=self.endpoint_url, **changes)

    def __enter__(self) -> FlakyS3Proxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
