"""Local processes for tests and benchmarks: an echo upstream speaking the protocol, a bridge."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def process(argv: list[str], port: int, log: Path, env: dict | None = None):
    """Run `argv` with its output in `log`; yield once it listens on `port`, stop it after."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def echo_upstream(tmp: Path):
    port = free_port()
    with process([sys.executable, "-m", "myca_ops.bridge.echo", "--port", str(port)], port, tmp / "echo.log"):
        yield f"ws://127.0.0.1:{port}/api/chat"


@contextlib.contextmanager
def bridge(tmp: Path, **settings):
    port = free_port()
    config = {"listen_host": "127.0.0.1", "listen_port": port, **settings}
    path = tmp / f"bridge-{port}.json"
    path.write_text(json.dumps(config))
    with process(
        [sys.executable, "-m", "myca_ops.bridge", "serve", "--config", str(path)], port, tmp / f"bridge-{port}.log"
    ):
        yield f"http://127.0.0.1:{port}"
