"""myca-mas: the MAS side of myca-ops.

myca-mas migrate [--check] [--env-file F]   apply (or list) pending schema migrations
myca-mas serve                 the API on MYCA_MAS_HOST:MYCA_MAS_PORT (systemd's myca-mas)
myca-mas collector NAME        one collector (systemd's myca-collector@NAME)
myca-mas import-check          prove asyncpg imports in this interpreter, print its version
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from myca_ops.envfile import read_env_file
from myca_ops.mas.settings import Settings, SettingsError


async def migrate(settings: Settings, check: bool) -> list[str]:
    import asyncpg

    from myca_ops.mas.schema import migrate as apply

    conn = await asyncpg.connect(settings.dsn, timeout=10)
    try:
        return await apply(conn, check=check)
    finally:
        await conn.close()


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
