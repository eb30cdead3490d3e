import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "module_utils"))


def ansible_env(**extra: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture
def run_module():
    """Run one of the project's modules for real on the control node, return its result."""

    def run(module: str, args: dict, check: bool = False) -> dict:
        cmd = [str(BIN / "ansible"), "localhost", "-m", module, "-a", json.dumps(args)]
        if check:
            cmd.append("--check")
        env = ansible_env(ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        data = json.loads(out.stdout)
        return data["plays"][0]["tasks"][0]["hosts"]["localhost"]

    return run


@pytest.fixture(scope="session")
def lab_weights() -> Path:
    """The lab's generated checkpoint (cached by its recipe; `make lab-assets` makes it first)."""
    from myca_ops.lab.weights import generate

    return generate(ROOT / ".lab" / "weights")


@pytest.fixture(scope="session")
def moshi_server(lab_weights, tmp_path_factory):
    """The real moshi.server, started by myca-moshi on CPU with the lab weights: (url, log path)."""
    import socket
    import time

    from myca_ops.voice.probe import wait_for_handshake

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        MYCA_MOSHI_DEVICE="cpu",
        MYCA_MOSHI_PORT=str(port),
        MYCA_MOSHI_WEIGHTS_DIR=str(lab_weights),
        MYCA_MOSHI_RECOMMENDED_MODE="cpu",
        NO_CUDA_GRAPH="1",
    )  # a stray switch the launcher must clear
    log = tmp_path_factory.mktemp("moshi") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "myca_ops.voice.launcher", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"ws://127.0.0.1:{port}/api/chat"
    try:
        wait_for_handshake(url, 180)
        time.sleep(0.5)  # let the handshake's session end before the first test connects
        yield url, log
    finally:
        server.terminate()
        server.wait(10)
