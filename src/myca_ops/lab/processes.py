"""Local processes for tests and benchmarks: an echo upstream speaking the protocol, a bridge."""

from __future__ import annotations

import contextlib
import json
import os
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


def launch_moshi(weights: Path, log: Path, **settings: str) -> tuple[subprocess.Popen, int]:
    """myca-moshi serving on CPU with `weights` on a free port, its output in `log`; MYCA_MOSHI_* `settings` added."""
    port = free_port()
    env = dict(
        os.environ,
        MYCA_MOSHI_DEVICE="cpu",
        MYCA_MOSHI_PORT=str(port),
        MYCA_MOSHI_WEIGHTS_DIR=str(weights),
        MYCA_MOSHI_RECOMMENDED_MODE="cpu",
        **settings,
    )
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "myca_ops.voice.launcher", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return server, port


@contextlib.contextmanager
def batched_moshi(weights: Path, log: Path, timeout: float = 300, **settings: str):
    """The batched server (launch_moshi) once its /healthz says the model is loaded: yield
    (process, base URL http://127.0.0.1:PORT); stopped after."""
    from myca_ops.voice.health import check

    server, port = launch_moshi(weights, log, MYCA_MOSHI_SERVER="batched", **settings)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not check(url)["up"]:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the batched server did not load: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        server.wait(10)


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
