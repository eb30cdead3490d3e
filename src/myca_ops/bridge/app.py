"""The relay: browser <-> bridge <-> Moshi, one websocket each way, message by message.

Each direction is a loop that reads one message and awaits its send before reading the
next: a slow side stops the reading of the other (TCP backpressure), so nothing queues up
in the bridge beyond one message per direction.

    python -m myca_ops.bridge serve --config /etc/myca-bridge/bridge.json
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aiohttp
import yarl
from aiohttp import WSCloseCode, WSMsgType, web

from myca_ops.bridge.config import BridgeConfig
from myca_ops.bridge.health import healthz, metrics
from myca_ops.bridge.state import CONFIG, CREDENTIALS, STATE, BridgeState, Metrics, origin_of, token_ok
from myca_ops.bridge.ticket_route import mint_ticket
from myca_ops.bridge.tickets import Refusal, unauthorized
from myca_ops.sessions import CLOSE_TIMEOUT_S, Liveness, close, end, is_audio, watch
from myca_ops.voice.persona import NAME as persona_name
from myca_ops.voice.persona import NAME_RULE

log = logging.getLogger("myca_ops.bridge")

# Close codes a client sees (RFC 6455 and IANA's registry; 4xxx are the bridge's own).
CLOSE_BUSY = WSCloseCode.TRY_AGAIN_LATER  # 1013
CLOSE_TEXT = WSCloseCode.UNSUPPORTED_DATA  # 1003
CLOSE_TOO_BIG = WSCloseCode.MESSAGE_TOO_BIG  # 1009
CLOSE_UPSTREAM = WSCloseCode.BAD_GATEWAY  # 1014
AUDIO = 1
# aiohttp itself closes (with no reason) above this; between our limit and this we say why.
HARD_LIMIT_FACTOR = 4
UPSTREAM_MAX_MESSAGE = 4 * 1024 * 1024
CLIENT_PROMPTS = ("text_prompt", "voice_prompt")  # PersonaPlex's, passed on only with allow_client_prompts
BUSY_GRACE_S = 0.1  # a caller who finds every session in use waits this long for one to end
REFUSAL_CLOSE_S = 0.1


def upstream_url(config: BridgeConfig, request: web.Request, persona: str | None = None) -> str:
    """The upstream URL with the client's query string, less its credentials and (unless
    allow_client_prompts) its prompts; a ticket's persona replaces the URL's, and a caller who
    names none gets default_persona."""
    hidden = CREDENTIALS + (() if config.allow_client_prompts else CLIENT_PROMPTS)
    query = [(k, v) for k, v in request.query.items() if k not in hidden and not (persona and k == "persona")]
    prompted = any(k in CLIENT_PROMPTS and v for k, v in query)
    persona = persona or (None if prompted or "persona" in request.query else config.default_persona or None)
    query += [("persona", persona)] if persona else []
    return str(yarl.URL(config.upstream).extend_query(query)) if query else config.upstream


def authorize(request: web.Request, config: BridgeConfig, state: BridgeState, origin: str | None) -> str | None:
    """Whether this caller may have a session: a ticket (used up here), a service token with the
    session scope, or no credential where none is asked for.  The ticket's persona, if any;
    Refusal with the reason otherwise (a persona named outside the server's rule first)."""
    persona = request.query.get("persona")
    if persona is not None and not persona_name.fullmatch(persona):
        raise Refusal(400, 4400, f"persona must be {NAME_RULE}")
    ticket = request.query.get("ticket")
    if ticket is not None:
        if state.tickets is None:
            raise unauthorized("this bridge takes no tickets (bridge_ticket_keys is empty)")
        return state.tickets.redeem(ticket, origin, persona).get("persona")
    if config.open or token_ok(request, config.tokens_with("session")):
        return None
    if config.ticket_keys:
        raise unauthorized("a ticket is required (?ticket=, minted by the site's server), or a service token")
    raise unauthorized("a valid token is required: header 'Authorization: Bearer T' or ?token=T")


async def slot_within(state: BridgeState, config: BridgeConfig, seconds: float) -> bool:
    """Whether a session ends within `seconds`: a caller who hangs up abruptly and calls again at
    once may arrive before the bridge has read the reset of the old connection."""
    async with state.slot_freed:
        try:
            await asyncio.wait_for(state.slot_freed.wait_for(lambda: state.active < config.max_sessions), seconds)
        except asyncio.TimeoutError:
            return False
    return True


async def chat(request: web.Request) -> web.StreamResponse:
    config, state = request.app[CONFIG], request.app[STATE]
    m = state.metrics
    origin = origin_of(request)
    if config.allowed_origins and origin is not None and origin not in config.allowed_origins:
        m.sessions.labels("forbidden_origin").inc()
        raise web.HTTPForbidden(text=f"origin {origin} is not allowed (bridge_allowed_origins)\n")
    try:
        persona = authorize(request, config, state, origin)
    except Refusal as refusal:
        m.sessions.labels({400: "bad_request", 401: "unauthorized", 403: "forbidden"}.get(refusal.status, "busy")).inc()
        if origin is None:  # not a browser: the HTTP answer says it all
            raise http_error(refusal) from None
        # A browser sees only 1006 when an upgrade is refused: it gets one, closed at once with the reason.
        ws = web.WebSocketResponse(autoping=False, autoclose=False, timeout=REFUSAL_CLOSE_S)
        await ws.prepare(request)
        await close(ws, refusal.code, refusal.reason, request.transport)
        return ws

    # A refused caller is not waited for: its close frame is sent, then the connection closed
    # after REFUSAL_CLOSE_S (a browser answers within it; a bot that never does costs nothing).
    refused = state.active >= config.max_sessions and not await slot_within(state, config, BUSY_GRACE_S)
    # autoclose off: the bridge answers a client's close itself, after freeing the slot, so a
    # caller whose close handshake has finished can always connect again at once.
    # No aiohttp heartbeat: its ping can wait forever behind a full write buffer, and its
    # timer outlives a refused socket. The relay's own watch pings and reads the pongs.
    ws = web.WebSocketResponse(
        max_msg_size=config.max_message_bytes * HARD_LIMIT_FACTOR,
        autoping=False,
        autoclose=False,
        timeout=REFUSAL_CLOSE_S if refused else CLOSE_TIMEOUT_S,  # how long a close waits for the answer
    )
    await ws.prepare(request)
    if refused or state.active >= config.max_sessions:  # (taken by another caller during prepare)
        m.sessions.labels("busy").inc()
        busy = f"busy: {state.active} of {config.max_sessions} sessions in use; try again later"
        await close(ws, CLOSE_BUSY, busy, request.transport)
        return ws

    state.active += 1
    m.sessions_active.inc()
    session_id = uuid.uuid4().hex
    started = time.time()
    peer = request.remote or ""
    state.events.emit({"event": "session_start", "session_id": session_id, "at": started, "peer": peer})
    outcome, code, reason, upstream = "relayed", 1000, "client closed", None
    try:
        upstream = await connect_upstream(request, config, state, persona)
        outcome, code, reason = await relay(ws, upstream, config, m)
    except UpstreamBusy as exc:
        outcome, code, reason = "busy", CLOSE_BUSY, str(exc)
    except UpstreamUnreachable as exc:
        outcome, code, reason = "upstream_error", CLOSE_UPSTREAM, str(exc)
    finally:
        # The slot is free the moment either side is gone, before any close handshake: a caller
        # who reconnects right after hanging up (a page reload) must not be told "busy".
        state.active -= 1
        async with state.slot_freed:
            state.slot_freed.notify()
        m.sessions_active.dec()
        m.sessions.labels(outcome).inc()
        ended = time.time()
        log.info("session %s from %s ended after %.1f s: %s %s", session_id, peer, ended - started, code, reason)
        state.events.emit(
            {
                "event": "session_end",
                "session_id": session_id,
                "at": ended,
                "peer": peer,
                "duration_s": round(ended - started, 3),
                "outcome": outcome,
                "close_code": int(code),
                "reason": reason,
            }
        )
        # Always end the upstream session too (moshi.server serves one at a time), in the
        # background; the client's close is bounded, so the handler ends within CLOSE_TIMEOUT_S.
        if upstream is not None:
            state.spawn(close(upstream, 1000, "client gone" if outcome == "relayed" else reason), closing=True)
        await end(outcome, code, reason, ws, request.transport)
    return ws


def http_error(refusal: Refusal) -> web.HTTPException:
    kinds = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        503: web.HTTPServiceUnavailable,
    }
    return kinds[refusal.status](text=refusal.reason + "\n")


class UpstreamUnreachable(Exception):
    pass


class UpstreamBusy(Exception):
    """The upstream answered 503: HAProxy's queue timed out with every slot of the pool in use."""


async def connect_upstream(request: web.Request, config: BridgeConfig, state: BridgeState, persona: str | None):
    t0 = time.perf_counter()
    if state.upstream_closes:
        # A session of ours that just ended may still hold its slot upstream until its close is
        # answered: a caller who hangs up and calls again at once must not be told "busy".
        await asyncio.wait(set(state.upstream_closes), timeout=CLOSE_TIMEOUT_S)
    try:
        upstream = await state.client.ws_connect(
            upstream_url(config, request, persona),
            ssl=state.upstream_ssl,
            max_msg_size=UPSTREAM_MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
            autoping=True,
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 503:
            slots = f"all {config.upstream_slots} slots" if config.upstream_slots else "every slot"
            raise UpstreamBusy(f"busy: {slots} in use; try again later") from exc
        raise UpstreamUnreachable(f"upstream refused the websocket: HTTP {exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise UpstreamUnreachable(f"upstream unreachable: {type(exc).__name__}: {exc}") from exc
    state.metrics.connect.observe(time.perf_counter() - t0)
    return upstream


async def relay(ws: web.WebSocketResponse, upstream, config: BridgeConfig, m: Metrics):
    """Relay until one side ends or a rule ends the session; returns (outcome, close code, reason)."""
    seen = Liveness(config.rules())
    tasks = {
        asyncio.create_task(pump_from_client(ws, upstream, config, m, seen)),
        asyncio.create_task(pump_from_upstream(upstream, ws, m)),
        asyncio.create_task(watch(ws, seen)),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()
    except (ConnectionError, aiohttp.ClientError) as exc:  # a side vanished mid-send
        return "connection_lost", WSCloseCode.GOING_AWAY, f"connection lost: {type(exc).__name__}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pump_from_client(ws: web.WebSocketResponse, upstream, config: BridgeConfig, m: Metrics, seen: Liveness):
    nbytes, relay_time, per_kind = m.per_direction["to_upstream"]
    limit = config.max_message_bytes
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.PING, WSMsgType.PONG):
            over = await seen.control(ws, msg.type, msg.data)
            if over:
                m.dropped.labels("over_budget").inc()
                return over
        elif msg.type == WSMsgType.BINARY:
            data = msg.data
            over = seen.frame(audio=is_audio(data))
            if over:
                m.dropped.labels("over_budget").inc()
                return over
            if len(data) > limit:
                return "too_big", CLOSE_TOO_BIG, f"message of {len(data)} bytes is over the limit of {limit}"
            counter = per_kind.get(data[0]) if data else None
            if counter is None:
                m.dropped.labels("unknown_kind").inc()
                continue
            started = time.perf_counter()
            await upstream.send_bytes(data)
            relay_time.observe(time.perf_counter() - started)
            counter.inc()
            nbytes.inc(len(data))
        elif msg.type == WSMsgType.TEXT:
            return "text_frame", CLOSE_TEXT, "text frames are not part of the protocol: send binary, first byte = kind"
        elif msg.type == WSMsgType.ERROR:
            code = ws.close_code or WSCloseCode.PROTOCOL_ERROR
            return "protocol_error", code, f"client error: {msg.data}"
        else:  # CLOSE, CLOSING, CLOSED
            return "relayed", 1000, "client closed"


async def pump_from_upstream(upstream, ws: web.WebSocketResponse, m: Metrics):
    nbytes, relay_time, per_kind = m.per_direction["to_client"]
    unknown = m.messages.labels("to_client", "unknown")
    while True:
        msg = await upstream.receive()
        if msg.type == WSMsgType.BINARY:
            data = msg.data
            started = time.perf_counter()
            await ws.send_bytes(data)
            relay_time.observe(time.perf_counter() - started)
            (per_kind.get(data[0], unknown) if data else unknown).inc()
            nbytes.inc(len(data))
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        else:
            code = upstream.close_code
            if code is None or code in (1005, 1006, 1015):  # reserved: never sent in a close frame
                code = WSCloseCode.GOING_AWAY
            if msg.type == WSMsgType.ERROR:
                return "upstream_error", CLOSE_UPSTREAM, f"upstream error: {msg.data}"
            return "upstream_closed", code, "upstream closed the session"


def make_app(config: BridgeConfig) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[STATE] = state = BridgeState(config)

    async def lifecycle(app: web.Application):
        state.client = aiohttp.ClientSession()
        await state.events.start()
        yield
        await asyncio.gather(*state.background, return_exceptions=True)
        await state.events.stop()
        await state.client.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/api/chat", chat)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)  # the MYCA website's name for it
    app.router.add_get("/metrics", metrics)
    if config.ticket_route:
        app.router.add_route("POST", "/api/voice/ticket", mint_ticket)
        app.router.add_route("OPTIONS", "/api/voice/ticket", mint_ticket)
    return app
