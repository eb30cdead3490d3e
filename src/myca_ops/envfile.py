"""The services' environment files, read as systemd reads an EnvironmentFile.

    python -m myca_ops.envfile FILE COMMAND [ARG...]

runs COMMAND with FILE's variables added to the environment: supervisord (hosts without
systemd) starts each service this way, with the same file its systemd unit reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, optional double quotes, # comments."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip().strip('"')
    return env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m myca_ops.envfile FILE COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        env = {**os.environ, **read_env_file(Path(args[0]))}
    except OSError as exc:
        print(f"myca_ops.envfile: cannot read {args[0]}: {exc.strerror}", file=sys.stderr)
        return 2
    os.execvpe(args[1], args[1:], env)


if __name__ == "__main__":
    sys.exit(main())
