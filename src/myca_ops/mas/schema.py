"""Schema migrations: plain versioned SQL files, applied in order, once, at deploy time.

Files are `migrations/NNNN_name.sql`; the table schema_migrations records what was applied.
Each file runs in its own transaction with its record, under an advisory lock, so two
deploys at once cannot both apply it.

    myca-mas migrate [--check]
"""

from __future__ import annotations

from importlib import resources

LOCK_KEY = 0x6D796361  # "myca": pg_advisory_xact_lock key for migrations


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("myca_ops.mas.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name[:-4].partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


async def applied(conn) -> set[int]:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn, check: bool = False) -> list[str]:
    """Apply the pending migrations (or only list them with `check`); returns their names."""
    pending = [m for m in available() if m[0] not in await applied(conn)]
    done = []
    for version, name, sql in pending:
        label = f"{version:04d}_{name}"
        if check:
            done.append(label)
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                continue  # another deploy applied it while we waited for the lock
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
        done.append(label)
    return done
