"""A private PostgreSQL cluster from the distribution's binaries, for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from myca_ops.lab.processes import free_port


class PostgresError(RuntimeError):
    pass


class PostgresCluster:
    """A private PostgreSQL cluster (the distribution's binaries), scram-sha-256 over TCP."""

    user, password = "myca", "test-only-password"

    def __init__(self, root: Path) -> None:
        import glob
        import pwd

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise PostgresError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
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
            raise PostgresError(f"{tool} failed: {out.stderr or out.stdout}")

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
