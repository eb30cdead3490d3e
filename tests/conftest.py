import base64
import configparser
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from myca_ops.lab.postgres import PostgresCluster, PostgresError
from myca_ops.lab.processes import free_port, launch_moshi

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "module_utils"))


# Tests that need the lab tier: generated weights and moshi (torch), PostgreSQL, Docker.
# A test using one of these fixtures is marked `lab` by itself; others carry the mark.
LAB_FIXTURES = {"lab_weights", "moshi_server", "postgres", "mas_db", "lab_hosts", "prometheus"}


def pytest_collection_modifyitems(items):
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def ansible_env(**extra: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def module_doc(module: str) -> dict:
    """A module's documentation as ansible-doc renders it: {doc, examples, return, metadata}."""
    cmd = [str(BIN / "ansible-doc"), "-M", str(ROOT / "library"), "--json", module]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=True)
    return json.loads(out.stdout)[module]


# What Ansible itself adds to every module's result; the modules' own keys are in RETURN.
ANSIBLE_RESULT_KEYS = {
    "changed",
    "failed",
    "msg",
    "invocation",
    "skipped",
    "warnings",
    "deprecations",
    "exception",
    "action",
}


def undocumented(module: str, result: dict) -> list[str]:
    """Keys of a real `result` (nested where RETURN says `contains`) that the module's RETURN does not list."""

    def walk(value, docs: dict, path: str) -> list[str]:
        missing = []
        for key, item in value.items():
            if path == "" and (key in ANSIBLE_RESULT_KEYS or key.startswith("_ansible")):
                continue
            if key not in docs:
                missing.append(path + key)
            elif docs[key].get("contains"):
                items = item if isinstance(item, list) else [item]
                for element in items:
                    if isinstance(element, dict):
                        missing += walk(element, docs[key]["contains"], f"{path}{key}.")
        return missing

    return sorted(set(walk(result, module_doc(module)["return"], "")))


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


def pinned_package(*requirements: str) -> dict:
    """The environment of a subprocess that imports `requirements` (name==version, without their
    dependencies) before this venv's own copies: the versions another venv pins (NVIDIA's PersonaPlex
    server's). Installed once into .lab/pinned/ from the package index."""
    folder = ROOT / ".lab" / "pinned" / "+".join(r.replace("==", "-") for r in sorted(requirements))
    if not (folder / ".done").is_file():
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(folder)]
        installed = subprocess.run([*pip, *requirements], capture_output=True, text=True)
        assert installed.returncode == 0, f"pip could not install {requirements}: {installed.stderr[-1500:]}"
        (folder / ".done").touch()
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.fixture(scope="session")
def lab_weights() -> Path:
    """The lab's generated checkpoint (cached by its recipe; `make lab-assets` makes it first)."""
    from myca_ops.lab.weights import generate

    return generate(ROOT / ".lab" / "weights")


@pytest.fixture(scope="session")
def moshi_server(lab_weights, tmp_path_factory):
    """The real moshi.server (moshi_server: upstream), started by myca-moshi on CPU with the lab weights: (url, log path)."""
    import time

    from myca_ops.voice.probe import wait_for_handshake

    log = tmp_path_factory.mktemp("moshi") / "server.log"
    # NO_CUDA_GRAPH: a stray switch the launcher must clear.
    server, port = launch_moshi(lab_weights, log, MYCA_MOSHI_SERVER="upstream", NO_CUDA_GRAPH="1")
    url = f"ws://127.0.0.1:{port}/api/chat"
    try:
        wait_for_handshake(url, 180)
        time.sleep(0.5)  # let the handshake's session end before the first test connects
        yield url, log
    finally:
        server.terminate()
        server.wait(10)


async def serve_one_route(path: str, handler):
    """An aiohttp app answering GET `path` with `handler` on a free loopback port: (runner, port);
    `await runner.cleanup()` stops it."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def raw_websocket(base: str, rcvbuf: int = 4096) -> socket.socket:
    """A websocket opened by hand on a plain socket with a small receive buffer: a client that
    can stop reading at will. `base` is host:port, with or without http://."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.settimeout(5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: it sets the window
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.fixture(scope="session")
def postgres():
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="myca-pg-"))  # not under pytest's root-only folder: postgres must reach it
    try:
        cluster = PostgresCluster(root)
    except PostgresError as exc:
        pytest.fail(str(exc))
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mas_db(postgres, request) -> str:
    """A fresh, migrated database for one test: its DSN."""
    import re

    return postgres.create_database("t_" + re.sub(r"\W", "_", request.node.name)[:50].lower())


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """The distribution's Prometheus with one rule that fires at once (MycaTest): its base URL."""
    import shutil

    from myca_ops.lab.processes import process

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus on this machine: apt-get install prometheus (.ci/run installs it)")
    root = tmp_path_factory.mktemp("prometheus")
    (root / "rules.yml").write_text(
        "groups:\n  - name: test\n    rules:\n      - alert: MycaTest\n        expr: vector(1)\n"
        "        labels: {severity: warning}\n        annotations: {summary: always firing}\n"
    )
    (root / "prometheus.yml").write_text(f"global: {{evaluation_interval: 1s}}\nrule_files: [{root / 'rules.yml'}]\n")
    port = free_port()
    argv = [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with process(argv, port, root / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


def ini(text: str) -> configparser.ConfigParser:
    """A systemd unit or supervisord program file, its keys as written."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser
