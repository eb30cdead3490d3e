"""A server speaking Moshi's protocol that echoes: the bridge's test and benchmark upstream.

On connect it sends the handshake byte, then a metadata message (0x04 + JSON) naming the
query string it was called with, then returns every binary message unchanged.  Its ``/healthz``
answers as the batched server's does (model loaded, status ready) and counts the sessions it
has opened, so a test can see that health checks open none.

    python -m myca_ops.bridge.echo --port 9000
"""

from __future__ import annotations

import argparse
import json

import uvloop
from aiohttp import WSMsgType, web

from myca_ops.voice.protocol import HANDSHAKE, METADATA

SESSIONS = web.AppKey("sessions", list)


async def chat(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    request.app[SESSIONS].append(request.query_string)
    await ws.send_bytes(bytes([HANDSHAKE]))
    await ws.send_bytes(bytes([METADATA]) + json.dumps({"query": request.query_string}).encode())
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def healthz(request: web.Request) -> web.Response:
    opened = len(request.app[SESSIONS])
    return web.json_response({"model_loaded": True, "ok": True, "status": "ready", "sessions_opened": opened})


def make_app() -> web.Application:
    app = web.Application()
    app[SESSIONS] = []
    app.router.add_get("/api/chat", chat)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, loop=uvloop.new_event_loop())
