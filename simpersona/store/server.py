"""Run the storefront under uvicorn: in a child process (default) or a thread, on a free local port.

    with StoreServer(cfg, log_dir=run_dir / "simulate" / variant / "events", variant=variant) as server:
        ... server.base_url ...          # e.g. http://127.0.0.1:41235

A child process keeps the web shop off the caller's GIL and event loop (Playwright, Ray actors)
and can be killed for crash tests (`kill()` = SIGKILL); it exits by itself when its parent dies
(it watches its stdin pipe) and then removes its spec and log folder, which no one is left to read or
remove. `stop()` shuts it down gracefully (the event log rolls into Parquet).

Standalone (a person can shop in a browser):
    python -m simpersona.store.server store.merchants=[m1,m2] [store.variant=free_shipping] [store.port=8000]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

READY = "SIMPERSONA_STORE_LISTENING"


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5, backlog=2048)
    return uvicorn.Server(config)


def _plain(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    from simpersona.store.shops import store_section

    store = store_section(cfg)
    return OmegaConf.to_container(store, resolve=True) if not isinstance(store, dict) else dict(store)


class AppThread:
    """Any ASGI app under uvicorn in a daemon thread of this process, on a free port (tests, tools)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0):
        sock = _bind(host, port)
        self.host, self.port = host, sock.getsockname()[1]
        self.server = server = _uvicorn_server(app)
        errors: list[BaseException] = []

        def run():
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                sock.close()

        self.thread = threading.Thread(target=run, name=f"asgi-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if errors or not self.thread.is_alive():
                raise RuntimeError(f"server failed to start: {errors[0] if errors else 'thread exited'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {startup_timeout_s} s")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


class StoreServer:
    """A running storefront: `base_url`, `port`, `pid` (process mode), `stop()`, `kill()`."""

    def __init__(self, cfg: Any = None, *, log_dir: str | Path, variant: str | None = None,
                 merchants: list[str] | None = None, mode: str = "process", host: str | None = None,
                 port: int | None = None, startup_timeout_s: float = 60.0):
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', got {mode!r}")
        self.store = _plain(cfg)
        self.log_dir = Path(log_dir)
        self.variant = variant if variant is not None else self.store.get("variant", "baseline")
        self.merchants = list(merchants) if merchants is not None else None
        self.mode = mode
        self.host = host or self.store.get("host") or "127.0.0.1"
        self.port = int(port if port is not None else self.store.get("port") or 0)
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self._app_thread: AppThread | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> StoreServer:
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_process()
        return self

    def _start_thread(self) -> None:
        from simpersona.store.app import create_app

        app = create_app({"store": self.store}, self.log_dir, self.variant, self.merchants)
        self._app_thread = AppThread(app, self.host, self.port, self.startup_timeout_s)
        self.port = self._app_thread.port

    def _start_process(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="simpersona-store-")
        spec = Path(self._tmp.name) / "spec.json"
        spec.write_text(json.dumps({"store": self.store, "log_dir": str(self.log_dir), "variant": self.variant,
                                    "merchants": self.merchants, "host": self.host, "port": self.port,
                                    "scratch_dir": self._tmp.name}))
        out = Path(self._tmp.name) / "server.log"
        with open(out, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "simpersona.store.server", "--spec", str(spec)],
                                         stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT,
                                         cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            text = out.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith(READY):
                    self.port = int(line.split()[1])
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"storefront process exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"storefront did not start within {self.startup_timeout_s} s:\n{text[-3000:]}")
            time.sleep(0.02)

    def output(self) -> str:
        """The child process's log (warnings, tracebacks)."""
        if self._tmp is None:
            return ""
        path = Path(self._tmp.name) / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """Graceful shutdown: in-flight requests finish, the event log is rolled into Parquet."""
        if self._app_thread is not None:
            self._app_thread.stop(timeout_s)
            self._app_thread = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL the server process (crash tests): the event log keeps what was acknowledged."""
        if self.proc is None:
            raise RuntimeError("kill() needs mode='process'")
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _serve(store: dict, log_dir: str, variant: str | None, merchants: list[str] | None, host: str, port: int,
           watch_stdin: bool) -> bool:
    """Serve in this process until SIGTERM/SIGINT (or stdin EOF when `watch_stdin`); True when it was the
    EOF, that is the parent died (a live parent stops the server with SIGTERM and closes the pipe after)."""
    from simpersona.store.app import create_app

    app = create_app({"store": store}, log_dir, variant, merchants)
    sock = _bind(host, port)
    server = _uvicorn_server(app)

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"{READY} {sock.getsockname()[1]} http://{host}:{sock.getsockname()[1]}", flush=True)
        await task

    parent_gone = threading.Event()
    if watch_stdin:  # the parent died or closed the pipe: shut down gracefully
        def watch():
            sys.stdin.buffer.read()
            parent_gone.set()
            server.should_exit = True

        threading.Thread(target=watch, daemon=True).start()
    asyncio.run(main())
    return parent_gone.is_set()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--spec"]:
        spec = json.loads(Path(argv[1]).read_text())
        orphaned = _serve(spec["store"], spec["log_dir"], spec["variant"], spec["merchants"], spec["host"],
                          spec["port"], watch_stdin=True)
        if orphaned and spec.get("scratch_dir"):  # a killed parent cannot run its TemporaryDirectory cleanup
            shutil.rmtree(spec["scratch_dir"], ignore_errors=True)
        return
    from simpersona.config import load

    cfg = load("store", argv)
    store = _plain(cfg)
    variant = store.get("variant", "baseline")
    log_dir = store.get("log_dir") or os.path.join(cfg.run_dir, "store", variant, "events")
    print(f"storefront variant {variant!r}, event log {log_dir}", flush=True)
    _serve(store, log_dir, variant, None, store.get("host") or "127.0.0.1", int(store.get("port") or 0),
           watch_stdin=False)


if __name__ == "__main__":
    main()
