"""myca-mas: the MAS side of myca-ops.

myca-mas migrate [--check] [--env-file F]   apply (or list) pending schema migrations
myca-mas serve                 the API on MYCA_MAS_HOST:MYCA_MAS_PORT (systemd's myca-mas)
myca-mas collector NAME        one collector (systemd's myca-collector@NAME)
myca-mas import-check          prove asyncpg imports in this interpreter, print its version
myca-mas backup [--every S]    pg_dump the database into MYCA_MAS_BACKUP_DIR (myca_ops.mas.backup)
myca-mas restore DUMP          replace the database's objects with a backup's
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from myca_ops.envfile import read_env_file
from myca_ops.envvars import whole
from myca_ops.mas.settings import Settings, SettingsError


async def migrate(settings: Settings, check: bool) -> list[str]:
    import asyncpg

    from myca_ops.mas.schema import migrate as apply

    conn = await asyncpg.connect(settings.dsn, timeout=10)
    try:
        return await apply(conn, check=check)
    finally:
        await conn.close()


def backup_command(args, env: dict[str, str], settings: Settings) -> int:
    from myca_ops.mas import backup

    folder = Path(env.get("MYCA_MAS_BACKUP_DIR") or "/var/lib/myca-mas/backups")
    try:
        if args.command == "restore":
            backup.restore(settings.dsn, args.dump)
            print(json.dumps({"restored": str(args.dump)}))
            return 0
        keep = whole(env, "MYCA_MAS_BACKUP_KEEP", 7, minimum=1)
        while True:
            started = time.monotonic()
            try:
                done = backup.backup(settings.dsn, folder, keep, env.get("MYCA_MAS_BACKUP_COPY_COMMAND", ""))
                print(json.dumps(done), flush=True)
            except backup.BackupError as exc:
                if not args.every:
                    raise
                print(f"myca-mas: backup failed, next in {args.every:.0f} s: {exc}", file=sys.stderr, flush=True)
            if not args.every:
                return 0
            time.sleep(max(0.0, args.every - (time.monotonic() - started)))
    except (backup.BackupError, ValueError) as exc:
        print(f"myca-mas: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="myca-mas", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mig = sub.add_parser("migrate", help="apply pending schema migrations")
    mig.add_argument("--check", action="store_true", help="list the pending migrations, apply none")
    mig.add_argument(
        "--env-file", type=Path, help="read the settings (the DSN) from the service's environment file, not argv"
    )
    sub.add_parser("serve", help="run the API")
    col = sub.add_parser("collector", help="run one collector")
    col.add_argument("name")
    sub.add_parser("import-check", help="import asyncpg and print its version as JSON")
    bak = sub.add_parser("backup", help="back the database up (MYCA_MAS_BACKUP_DIR, _KEEP, _COPY_COMMAND)")
    bak.add_argument("--every", type=float, default=0, help="then again every SECONDS (where no timer runs it)")
    res = sub.add_parser("restore", help="replace the database's objects with a backup's")
    res.add_argument("dump", type=Path)
    for command in (bak, res):
        command.add_argument("--env-file", type=Path, help="read the settings from the service's environment file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "import-check":
        import asyncpg

        print(json.dumps({"asyncpg": asyncpg.__version__, "python": sys.executable}))
        return 0
    try:
        env = None
        if getattr(args, "env_file", None):
            env = {**os.environ, **read_env_file(args.env_file)}
        settings = Settings.from_env(env)
    except (SettingsError, OSError) as exc:
        print(f"myca-mas: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        try:
            names = asyncio.run(migrate(settings, args.check))
        except (OSError, asyncio.TimeoutError) as exc:
            print(f"myca-mas: cannot reach PostgreSQL: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"pending" if args.check else "applied": names}))
        return 0
    if args.command in ("backup", "restore"):
        return backup_command(args, env if env is not None else dict(os.environ), settings)
    if args.command == "collector":
        from myca_ops.mas.collectors import run

        asyncio.run(run(args.name, settings))
        return 0
    import uvicorn

    host, port = os.environ.get("MYCA_MAS_HOST", "0.0.0.0"), int(os.environ.get("MYCA_MAS_PORT", "8001"))
    uvicorn.run("myca_ops.mas.app:app", host=host, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
