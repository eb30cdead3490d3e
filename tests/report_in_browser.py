"""Open a page in headless Chromium, as a person would, and read back what it shows: each
picture's loaded size and each table's cells (by table id).

    python tests/report_in_browser.py reports/verify.html     # JSON on stdout

Talks to Chromium over its DevTools protocol (a websocket): navigate, wait for the load
event, evaluate one expression. Used by tests/test_verify_report.py and molecule's verify.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp

READ_PAGE = """JSON.stringify({
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                         width: i.naturalWidth, height: i.naturalHeight})),
  tables: Object.fromEntries([...document.querySelectorAll('table[id]')].map(t =>
    [t.id, [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()))])),
})"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "/snap/bin/chromium"):  # the last: Ubuntu's snap
        if path := shutil.which(name):
            return path
    raise RuntimeError("no Chromium on this machine: make prereqs installs it")


async def read_page(page: Path | str, timeout: float = 30, expression: str = READ_PAGE) -> dict:
    """What `expression` (JSON text, or a promise of it) gives on `page` (a file, or an http URL)
    once it has loaded."""
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            "--headless=new",
            "--no-sandbox",  # as root in CI
            "--disable-gpu",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            url = page if isinstance(page, str) else page.resolve().as_uri()
            return await asyncio.wait_for(_drive(proc, url, expression), timeout)
        finally:
            proc.kill()
            await proc.wait()


async def _drive(proc, url: str, expression: str) -> dict:
    while True:  # Chromium names its DevTools websocket on stderr once it listens
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError("Chromium exited before it listened for DevTools")
        if found := re.search(r"DevTools listening on (ws://\S+)", line):
            break
    async with aiohttp.ClientSession() as http, http.ws_connect(found.group(1), max_msg_size=0) as ws:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, session: str | None = None, **params) -> dict:
            n = next(ids)
            await ws.send_json(
                {"id": n, "method": method, "params": params, **({"sessionId": session} if session else {})}
            )
            return await until(lambda m: m.get("id") == n)

        async def until(match) -> dict:
            async for msg in ws:
                data = json.loads(msg.data)
                if match(data):
                    if "error" in data:
                        raise RuntimeError(f"DevTools: {data['error']}")
                    return data
            raise RuntimeError("DevTools closed the connection")

        target = (await call("Target.createTarget", url="about:blank"))["result"]["targetId"]
        session = (await call("Target.attachToTarget", targetId=target, flatten=True))["result"]["sessionId"]
        await call("Page.enable", session)
        await call("Page.navigate", session, url=url)
        await until(lambda m: m.get("method") == "Page.loadEventFired")
        result = await call("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        return json.loads(result["result"]["result"]["value"])


if __name__ == "__main__":
    print(json.dumps(asyncio.run(read_page(Path(sys.argv[1]))), indent=2))
