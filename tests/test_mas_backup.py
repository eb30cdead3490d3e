"""The MAS database's backups (myca_ops.mas.backup) through `myca-mas backup` and `myca-mas
restore`, as the scheduled job and restore.yml run them, against a real PostgreSQL."""

import asyncio
import json
import os
import subprocess
import sys
import time

import asyncpg
import pytest
from test_mas import scrape, serve

from myca_ops.mas import backup


async def sql(dsn: str, query: str):
    """A SELECT's rows, or another statement's (or statements') status."""
    conn = await asyncpg.connect(dsn)
    try:
        return await (conn.fetch if query.startswith("SELECT") else conn.execute)(query)
    finally:
        await conn.close()


def myca_mas(env_file, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "myca_ops.mas", *args, "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MYCA_", "PG"))},
    )


def env_file(tmp_path, dsn: str, keep: int = 2):
    path = tmp_path / "mas.env"
    path.write_text(f"MYCA_MAS_DSN={dsn}\nMYCA_MAS_BACKUP_DIR={tmp_path / 'backups'}\nMYCA_MAS_BACKUP_KEEP={keep}\n")
    return path


SAMPLES = "INSERT INTO samples SELECT gen_random_uuid(), 'host', 'mas-a', now(), jsonb_build_object('n', n) FROM generate_series(1, 50) n"


def test_a_backup_brings_the_samples_back_after_the_database_lost_them(tmp_path, mas_db):
    asyncio.run(sql(mas_db, SAMPLES))
    before = asyncio.run(sql(mas_db, "SELECT id, data FROM samples ORDER BY id"))
    config = env_file(tmp_path, mas_db)

    run = myca_mas(config, "backup")
    assert run.returncode == 0, run.stderr
    done = json.loads(run.stdout)
    dump = tmp_path / "backups" / done["file"]
    assert dump.stat().st_size == done["bytes"] > 0
    assert backup.last_backup(tmp_path / "backups")["file"] == done["file"]

    asyncio.run(sql(mas_db, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"))  # every table gone
    run = myca_mas(config, "restore", str(dump))
    assert run.returncode == 0, run.stderr
    assert asyncio.run(sql(mas_db, "SELECT id, data FROM samples ORDER BY id")) == before
    # The schema's own record came back too: the next migrate applies nothing.
    assert [r["version"] for r in asyncio.run(sql(mas_db, "SELECT version FROM schema_migrations"))] == [1]


def test_the_newest_are_kept_and_a_failed_backup_leaves_no_file_and_the_last_success_as_it_was(tmp_path, mas_db):
    config = env_file(tmp_path, mas_db, keep=2)
    names = []
    for _ in range(3):
        run = myca_mas(config, "backup")
        assert run.returncode == 0, run.stderr
        names.append(json.loads(run.stdout)["file"])
        time.sleep(1.1)  # a backup's name is its second
    assert [p.name for p in backup.backups(tmp_path / "backups")] == names[1:]
    assert backup.last_backup(tmp_path / "backups")["removed"] == names[:1]

    wrong = env_file(tmp_path, mas_db.replace(":test-only-password@", ":wrong@"), keep=2)
    run = myca_mas(wrong, "backup")
    assert run.returncode == 1 and "pg_dump failed" in run.stderr and "password authentication failed" in run.stderr
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted([*names[1:], "last-backup.json"])
    assert backup.last_backup(tmp_path / "backups")["file"] == names[-1]

    run = myca_mas(config, "restore", str(tmp_path / "backups" / "mas-20000101T000000Z.dump"))
    assert run.returncode == 1 and "mas-20000101T000000Z.dump: no such backup" in run.stderr


def test_the_mas_exports_the_last_successful_backup_and_zero_before_the_first(tmp_path, mas_db):
    config = env_file(tmp_path, mas_db)
    port, server = serve(tmp_path, mas_db, MYCA_MAS_BACKUP_DIR=str(tmp_path / "backups"))
    metrics = f"http://127.0.0.1:{port}/metrics"
    with server:
        before = scrape(metrics)
        run = myca_mas(config, "backup")
        after = scrape(metrics)
    assert before["myca_mas_backup_last_success_timestamp_seconds"] == 0  # the age alert fires until one succeeds
    done = json.loads(run.stdout)
    assert after["myca_mas_backup_last_success_timestamp_seconds"] == done["finished_at"]
    assert 0 < time.time() - done["finished_at"] < 60 and after["myca_mas_backup_bytes"] == done["bytes"]
    # Without a backup folder (backups off) there is no such series at all.
    port, server = serve(tmp_path, mas_db)
    with server:
        assert not [k for k in scrape(f"http://127.0.0.1:{port}/metrics") if k.startswith("myca_mas_backup")]


def test_a_pg_dump_older_than_the_server_is_refused_naming_both_versions(tmp_path, mas_db, monkeypatch):
    """Debian 12's pg_dump (15) in the MAS's image against Ubuntu 24.04's server (16): a stand-in
    pg_dump of an older major against the real server, which pg_dump would refuse mid-backup."""
    import re

    server = asyncio.run(sql(mas_db, "SELECT current_setting('server_version_num')::int / 10000 AS major"))[0]["major"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {server - 1}.4'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(backup.BackupError) as refused:
        backup.backup(mas_db, tmp_path / "backups", keep=2)
    assert re.fullmatch(
        rf"pg_dump is PostgreSQL {server - 1}'s and the server runs PostgreSQL {server}: .*postgresql-client-{server}.*",
        str(refused.value),
    )
    assert not (tmp_path / "backups").exists()  # nothing written
