"""The MAS database's backups: pg_dump into a folder, the newest ``keep`` kept, and a restore.

A backup is ``mas-<UTC time>.dump`` in PostgreSQL's custom format, written beside its final
name and renamed only once pg_dump succeeded, so the folder never holds half a dump under a
backup's name. After each success ``last-backup.json`` says when, which file and how big (what
the MAS exports to Prometheus); a failed backup leaves it as it was, so the backup's age grows
and its alert fires. The password goes to pg_dump and pg_restore through libpq's environment,
never their argv (which every local user can read).

    myca-mas backup --env-file /etc/myca-mas/mas.env [--every SECONDS]
    myca-mas restore --env-file /etc/myca-mas/mas.env DUMP
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

PREFIX, SUFFIX = "mas-", ".dump"
LAST = "last-backup.json"


class BackupError(RuntimeError):
    pass


def libpq_env(dsn: str) -> dict[str, str]:
    """The DSN as libpq's variables (PGHOST, PGPASSWORD...), for a client that must not see it on argv."""
    url = urlsplit(dsn)
    if url.scheme not in ("postgresql", "postgres") or not url.path.strip("/"):
        raise BackupError("MYCA_MAS_DSN must be postgresql://user:password@host:port/database")
    env = {
        "PGHOST": url.hostname or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": unquote(url.username or ""),
        "PGPASSWORD": unquote(url.password or ""),
        "PGDATABASE": unquote(url.path.strip("/")),
    }
    return {k: v for k, v in env.items() if v}


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BackupError(
            f"{name} is not installed here: install the PostgreSQL client (postgresql-client) of the server's "
            "major version or newer"
        )
    return path


def check_versions(dsn: str) -> None:
    """Refuse, naming both versions, when pg_dump is older than the server (pg_dump would refuse
    with "server version mismatch"; Debian 12's client is 15, Ubuntu 24.04's server 16)."""
    said = subprocess.run([tool("pg_dump"), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", said)
    server = server_major(dsn)
    if match and server and int(match[1]) < server:
        raise BackupError(
            f"pg_dump is PostgreSQL {match[1]}'s and the server runs PostgreSQL {server}: pg_dump cannot dump a "
            f"newer server. Install postgresql-client-{server} (or newer) where the backup runs"
        )


def server_major(dsn: str) -> int | None:
    """The server's major version; None when it does not answer (pg_dump then says why)."""
    import asyncio

    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return conn.get_server_version().major
        finally:
            await conn.close()

    try:
        return asyncio.run(read())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return None


def backups(folder: Path) -> list[Path]:
    """The folder's backups, oldest first (their names sort by time)."""
    return sorted(folder.glob(f"{PREFIX}*{SUFFIX}"))


def backup(dsn: str, folder: Path, keep: int, copy_command: str = "") -> dict:
    """One backup; the oldest beyond `keep` removed; `copy_command` (the operator's remote target,
    with {file} for the dump's path) run after it. Raises BackupError naming what failed."""
    if keep < 1:
        raise BackupError(f"keep is {keep}: at least 1 backup must be kept")
    check_versions(dsn)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    name = f"{PREFIX}{datetime.fromtimestamp(started, timezone.utc):%Y%m%dT%H%M%SZ}{SUFFIX}"
    dump, partial = folder / name, folder / f".{name}.partial"
    env = {**os.environ, **libpq_env(dsn)}
    run = subprocess.run(
        [tool("pg_dump"), "--format=custom", "--no-owner", f"--file={partial}"], env=env, capture_output=True, text=True
    )
    if run.returncode:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {run.stderr.strip() or run.stdout.strip()}")
    partial.rename(dump)
    if copy_command:
        argv = [arg.replace("{file}", str(dump)) for arg in shlex.split(copy_command)]
        copied = subprocess.run(argv, capture_output=True, text=True)
        if copied.returncode:
            raise BackupError(f"the copy command failed ({copied.returncode}): {copied.stderr.strip()}")
    removed = [old.name for old in backups(folder)[:-keep]]
    for old in removed:
        (folder / old).unlink()
    last = {
        "finished_at": time.time(),
        "file": dump.name,
        "bytes": dump.stat().st_size,
        "seconds": round(time.time() - started, 2),
        "removed": removed,
    }
    tmp = folder / f".{LAST}.partial"
    tmp.write_text(json.dumps(last) + "\n")
    tmp.rename(folder / LAST)
    return last


def last_backup(folder: Path) -> dict | None:
    """What the last successful backup wrote (None before the first)."""
    try:
        return json.loads((folder / LAST).read_text())
    except (OSError, ValueError):
        return None


def restore(dsn: str, dump: Path) -> None:
    """Replace the database's objects with the dump's, in one transaction (all or nothing)."""
    if not dump.is_file():
        raise BackupError(f"{dump}: no such backup")
    env = {**os.environ, **libpq_env(dsn)}
    run = subprocess.run(
        [tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
         f"--dbname={env['PGDATABASE']}", str(dump)],
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    if run.returncode:
        raise BackupError(f"pg_restore failed, the database is as it was: {run.stderr.strip()}")
