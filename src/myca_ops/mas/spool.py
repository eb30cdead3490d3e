"""A collector's durable queue: samples are appended (and fsynced) before anything else.

Every sample goes to the spool first; a flush sends the whole spool, in order, in one
transaction, then truncates it.  While the database is down the spool grows; when it is
back, the next flush sends everything.  Nothing is lost (fsync before the sample counts as
taken) and nothing is stored twice (the database keys samples by their id, so a crash
between commit and truncation re-sends rows that are then skipped).  A torn last line (a
crash mid-append) is cut off when the spool is opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Spool:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        """Cut a partial last line left by a crash mid-append."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def __len__(self) -> int:
        return len(self.read())

    def drop_first(self, count: int) -> None:
        """Remove the first `count` records (the ones just stored), keeping any appended after."""
        rest = self.read()[count:]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in rest))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
