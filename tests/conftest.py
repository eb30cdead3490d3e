import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from myca_ops.lab.processes import free_port

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
    import time

    from myca_ops.voice.probe import wait_for_handshake

    port = free_port()
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


class PostgresCluster:
    """A private PostgreSQL cluster (the distribution's binaries), scram-sha-256 over TCP."""

    user, password = "myca", "test-only-password"

    def __init__(self, root: Path) -> None:
        import glob
        import pwd

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        self.bin = Path(bins[-1]).parent
        self.data = root / "data"
        self.port = free_port()
        # initdb refuses to run as root: run the cluster as the package's postgres user.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root.chmod(0o777)
        pwfile = root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        self._pg("initdb", "-D", self.data, "-U", self.user, "--pwfile", pwfile, "--auth=scram-sha-256")
        self.start()

    def _pg(self, tool: str, *args) -> None:
        out = subprocess.run([*self.run_as, self.bin / tool, *map(str, args)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{tool} failed: {out.stderr or out.stdout}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._pg("pg_ctl", "-D", self.data, "-o", opts, "-l", self.data / "log", "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import asyncio

        import asyncpg

        from myca_ops.mas.schema import migrate

        async def create():
            conn = await asyncpg.connect(self.dsn())
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            conn = await asyncpg.connect(self.dsn(name))
            await migrate(conn)
            await conn.close()

        asyncio.run(create())
        return self.dsn(name)


@pytest.fixture(scope="session")
def postgres():
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="myca-pg-"))  # not under pytest's root-only folder: postgres must reach it
    cluster = PostgresCluster(root)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mas_db(postgres, request) -> str:
    """A fresh, migrated database for one test: its DSN."""
    import re

    return postgres.create_database("t_" + re.sub(r"\W", "_", request.node.name)[:50].lower())
