"""The `oscar_shop` fixture: the real third-party shop (django-oscar, installed by the project's `shop`
extra) started on a free loopback port in a temporary data directory by scripts/thirdparty_shop.py,
and stopped after the session's last test that uses it."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "thirdparty_shop.py"
START_TIMEOUT_S = 180  # the first start on a machine migrates and seeds a template (~15 s); later ones copy it


@dataclass
class OscarShop:
    base_url: str
    data_dir: Path
    proc: subprocess.Popen
    startup_s: float

    def order_count(self) -> int:
        """The shop's own count of orders (Oscar's Order model), read by a separate process."""
        out = subprocess.run(
            [sys.executable, str(SCRIPT), "orders", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        return int(out.stdout.strip())

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@pytest.fixture(scope="session")
def oscar_shop(tmp_path_factory):
    if importlib.util.find_spec("oscar") is None or importlib.util.find_spec("django") is None:
        pytest.skip("django-oscar is not installed (pip install -e '.[shop]', which `make setup` does)")
    data_dir = tmp_path_factory.mktemp("oscar_shop")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = open(data_dir / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
    )
    shop = None
    try:
        while not _answers(base_url + "/catalogue/"):
            if proc.poll() is not None:
                raise RuntimeError(f"the Oscar shop exited with {proc.returncode}:\n{(data_dir / 'server.log').read_text()}")
            if time.monotonic() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"the Oscar shop did not answer in {START_TIMEOUT_S}s:\n{(data_dir / 'server.log').read_text()}")
            time.sleep(0.1)
        shop = OscarShop(base_url=base_url, data_dir=data_dir, proc=proc, startup_s=time.monotonic() - t0)
        print(f"\n[oscar_shop] answering at {base_url} after {shop.startup_s:.1f}s", file=sys.stderr)
        yield shop
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
