"""Install the collections of requirements.yml that this control node does not have yet.

The `ansible` package bundles them at the pinned versions, so on a normal set-up this does
nothing and needs no network (Ansible Galaxy may be unreachable).  Only a missing or
different version is installed, so plain ansible-core users get exactly the pins.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def installed_collections(galaxy: str) -> dict[str, set[str]]:
    out = subprocess.run([galaxy, "collection", "list", "--format", "json"], capture_output=True, text=True, check=True)
    found: dict[str, set[str]] = {}
    for collections in json.loads(out.stdout or "{}").values():
        for name, info in collections.items():
            found.setdefault(name, set()).add(str(info.get("version")))
    return found


def missing(requirements: Path, installed: dict[str, set[str]]) -> list[str]:
    wanted = yaml.safe_load(requirements.read_text())["collections"]
    return [f"{c['name']}:=={c['version']}" for c in wanted if str(c["version"]) not in installed.get(c["name"], set())]


def main() -> int:
    galaxy = str(Path(sys.executable).with_name("ansible-galaxy"))
    todo = missing(Path("requirements.yml"), installed_collections(galaxy))
    if todo:
        print(f"installing collections: {' '.join(todo)}", flush=True)
        return subprocess.run([galaxy, "collection", "install", *todo]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
