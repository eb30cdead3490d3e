"""A Hugging Face hub holding one repository: a local folder served over HTTP with the calls
huggingface_hub's snapshot_download makes (revision info, then a HEAD and a GET per file).

No hub is reachable from the lab; this lets the lab fetch weights the way a host fetches them
from Hugging Face (HF_ENDPOINT=http://127.0.0.1:PORT). Standard library only: it runs with a
host's own python3, where no venv exists (a host whose Moshi runs in Docker).

    python3 hub.py --repo lab/moshi --dir WEIGHTS --port 8765
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def commit_of(folder: Path) -> str:
    """The repository's one commit: a hash of its files' names and sizes."""
    listing = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


def make_handler(repo: str, folder: Path, commit: str):
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    etags: dict[str, str] = {}

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write(f"hub: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

        def refuse(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def revision_ok(self, revision: str) -> bool:
            return revision in ("main", commit)

        def do_GET(self):
            info = re.fullmatch(r"/api/models/(.+)/revision/([^/?]+)(\?.*)?", self.path)
            if info:
                if info.group(1) != repo:
                    return self.refuse(401, "RepoNotFound")
                if not self.revision_ok(info.group(2)):
                    return self.refuse(404, "RevisionNotFound")
                body = json.dumps(
                    {
                        "id": repo,
                        "modelId": repo,
                        "sha": commit,
                        "private": False,
                        "siblings": [{"rfilename": f} for f in files],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.resolve(send_body=True)

        def do_HEAD(self):
            self.resolve(send_body=False)

        def resolve(self, send_body: bool) -> None:
            found = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
            if not found or found.group(1) != repo:
                return self.refuse(401, "RepoNotFound")
            if not self.revision_ok(found.group(2)):
                return self.refuse(404, "RevisionNotFound")
            name = found.group(3)
            if name not in files:
                return self.refuse(404, "EntryNotFound")
            path = folder / name
            if name not in etags:
                etags[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            size = path.stat().st_size
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged and send_body:
                start = min(int(ranged.group(1)), size)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{etags[name]}"')
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if send_body:
                with open(path, "rb") as f:
                    f.seek(start)
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)

    return Hub


def serve(repo: str, folder: Path, host: str = "127.0.0.1", port: int = 0, commit: str = "") -> ThreadingHTTPServer:
    """A server (not yet serving: call serve_forever) for `repo` at `folder`, its one commit
    `commit` (default: commit_of(folder))."""
    if not folder.is_dir():
        raise SystemExit(f"hub: no folder {folder}")
    if commit and not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SystemExit(f"hub: a commit is 40 hexadecimal digits, got {commit!r}")
    return ThreadingHTTPServer((host, port), make_handler(repo, folder, commit or commit_of(folder)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="the repository's name, owner/name")
    parser.add_argument("--dir", type=Path, required=True, help="the folder it holds")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--commit", default="", help="its commit's id (default: a hash of the files' names and sizes)")
    args = parser.parse_args(argv)
    server = serve(args.repo, args.dir, args.host, args.port, args.commit)
    print(
        f"hub: {args.repo} at http://{args.host}:{server.server_port}, commit {args.commit or commit_of(args.dir)}",
        flush=True,
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
