"""The relay: browser <-> bridge <-> Moshi, one websocket each way, message by message.

Each direction is a loop that reads one message and awaits its send before reading the
next: a slow side stops the reading of the other (TCP backpressure), so nothing queues up
in the bridge beyond one message per direction.

    python -m myca_ops.bridge serve --config /etc/myca-bridge/bridge.json
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import ssl
import time
import urllib.parse
import uuid
from collections import OrderedDict

import aiohttp
import yarl
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from myca_ops.bridge.config import BridgeConfig
from myca_ops.bridge.events import EventSink
from myca_ops.bridge.tickets import Refusal, Tickets, unauthorized
from myca_ops.sessions import CLOSE_TIMEOUT_S, Liveness, close, end, is_audio, watch
from myca_ops.version import installed
from myca_ops.voice.health import check
from myca_ops.voice.persona import NAME as persona_name
from myca_ops.voice.persona import NAME_RULE
from myca_ops.voice.protocol import client_ssl

log = logging.getLogger("myca_ops.bridge")

KINDS = {0: "handshake", 1: "audio", 2: "text", 3: "control", 4: "metadata", 5: "error", 6: "ping"}
# Close codes a client sees (RFC 6455 and IANA's registry; 4xxx are the bridge's own).
CLOSE_BUSY = WSCloseCode.TRY_AGAIN_LATER  # 1013
CLOSE_TEXT = WSCloseCode.UNSUPPORTED_DATA  # 1003
CLOSE_TOO_BIG = WSCloseCode.MESSAGE_TOO_BIG  # 1009
CLOSE_UPSTREAM = WSCloseCode.BAD_GATEWAY  # 1014
AUDIO = 1
# aiohttp itself closes (with no reason) above this; between our limit and this we say why.
HARD_LIMIT_FACTOR = 4
UPSTREAM_MAX_MESSAGE = 4 * 1024 * 1024
HEALTH_CACHE_S = 2.0
CREDENTIALS = ("token", "ticket")  # query parameters the upstream never sees
CLIENT_PROMPTS = ("text_prompt", "voice_prompt")  # PersonaPlex's, passed on only with allow_client_prompts
BUSY_GRACE_S = 0.1  # a caller who finds every session in use waits this long for one to end
REFUSAL_CLOSE_S = 0.1

CONFIG = web.AppKey("config", BridgeConfig)
STATE: web.AppKey[BridgeState] = web.AppKey("state")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sessions_active = Gauge("myca_bridge_sessions_active", "Sessions being relayed now", registry=r)
        self.sessions = Counter("myca_bridge_sessions", "Sessions by outcome", ["outcome"], registry=r)
        self.sessions.labels("busy")  # at 0 from the start: Prometheus's increase() sees the first refusal
        self.bytes = Counter("myca_bridge_bytes", "Bytes relayed", ["direction"], registry=r)
        self.messages = Counter("myca_bridge_messages", "Messages relayed", ["direction", "kind"], registry=r)
        self.dropped = Counter("myca_bridge_dropped_messages", "Client messages dropped", ["reason"], registry=r)
        self.events_dropped = Counter(
            "myca_bridge_events_dropped", "Session events dropped, by reason", ["reason"], registry=r
        )
        self.connect = Histogram(
            "myca_bridge_upstream_connect_seconds",
            "Time to open the upstream websocket",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.relay = Histogram(
            "myca_bridge_relay_seconds",
            "Time from a message read to its write to the other side",
            ["direction"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        # Label children bound once: the per-message path stays a few attribute lookups.
        self.per_direction = {
            d: (self.bytes.labels(d), self.relay.labels(d), {k: self.messages.labels(d, n) for k, n in KINDS.items()})
            for d in ("to_upstream", "to_client")
        }


class BridgeState:
    def __init__(self, config: BridgeConfig) -> None:
        self.metrics = Metrics()
        self.active = 0
        self.client: aiohttp.ClientSession  # made at startup (on_startup), closed at cleanup
        self.events = EventSink(
            config.mas_url,
            config.event_queue_size,
            lambda reason: self.metrics.events_dropped.labels(reason).inc(),
            token=config.mas_token,
        )
        self.health: tuple[float, int, dict] | None = None
        self.health_lock = asyncio.Lock()
        self.metrics_networks = config.metrics_networks()
        upstream_ssl = client_ssl(config.upstream, config.upstream_ca or None, config.upstream_verify)
        # True, verified against the system's store: a context health checks share.
        self.upstream_ssl = ssl.create_default_context() if upstream_ssl is True else upstream_ssl
        self.background: set[asyncio.Task] = set()
        self.upstream_closes: set[asyncio.Task] = set()  # sessions the upstream may still count
        self.slot_freed = asyncio.Condition()
        self.tickets = (
            Tickets(config.ticket_keys, config.ticket_ttl_s, config.name, since=time.time())
            if config.ticket_keys
            else None
        )
        self.ticket_rate = RateLimit(config.ticket_rate_per_min)

    def spawn(self, coro, closing: bool = False) -> None:
        """Run `coro` in the background, holding a reference until it ends."""
        task = asyncio.create_task(coro)
        for tasks in (self.background, self.upstream_closes) if closing else (self.background,):
            tasks.add(task)
            task.add_done_callback(tasks.discard)


class RateLimit:
    """At most `per_min` requests per client in each minute (fixed windows), in bounded memory. A
    client is an IPv4 address or an IPv6 /64 (what one host is given). When `max_clients` are
    tracked, the one tracked longest is forgotten: a storm from many addresses costs their own
    limits, never a fresh visitor's ticket."""

    def __init__(self, per_min: int, max_clients: int = 10_000) -> None:
        self.per_min, self.max_clients = per_min, max_clients
        self.windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (window start, requests)

    @staticmethod
    def client(address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else address

    def allow(self, address: str) -> bool:
        now, client = time.monotonic(), self.client(address)
        start, count = self.windows.get(client, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        if count >= self.per_min:
            return False
        self.windows[client] = (start, count + 1)
        self.windows.move_to_end(client)
        while len(self.windows) > self.max_clients:
            self.windows.popitem(last=False)
        return True


def token_ok(request: web.Request, tokens: tuple[str, ...]) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else request.query.get("token", "")  # RFC 7235: any case
    # Any bytes a client sends compare (and fail) as bytes: never an encoding error, never a 500.
    raw = given.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(raw, t.encode()) for t in tokens)


class RedactCredentials(logging.Filter):
    """Takes any bearer token or ?token= out of a log record, whoever logs it: aiohttp logs the raw
    header line of a request it cannot parse, token included. Such a request (the client's fault)
    becomes one warning line instead of an error with a traceback."""

    PATTERN = re.compile(r"(Bearer\s+|token=|ticket=)[^\s&'\"\\]+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if isinstance(exc, HttpProcessingError):
            text = f"{text}: bad request: {exc}"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        elif record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = self.PATTERN.sub(r"\1REDACTED", text), None
        return True


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


def origin_of(request: web.Request) -> str | None:
    """The request's Origin, or 400: two Origin headers (which would be taken at the first), or one no
    browser sends (bytes outside printable ASCII, which no error text could even quote)."""
    origins = request.headers.getall("Origin", [])
    if len(origins) > 1:
        raise web.HTTPBadRequest(text="one Origin header, not several\n")
    if origins and not (origins[0].isascii() and origins[0].isprintable()):
        raise web.HTTPBadRequest(text="the Origin header is not an origin (printable ASCII)\n")
    return origins[0] if origins else None


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


async def healthz(request: web.Request) -> web.Response:
    """200 when Moshi is up (its /healthz: model loaded, full included; moshi.server: answering), else 503.

    Never a session: Moshi's own health contract (myca_ops.voice.health), cached for HEALTH_CACHE_S
    and single flight, so a burst of calls is one request upstream.  Only the networks in
    metrics_allowed (or a token holder) see the details; others get {ok} alone."""
    config, state = request.app[CONFIG], request.app[STATE]
    async with state.health_lock:  # the callers of a burst wait for one check and share it
        if state.health is None or time.monotonic() - state.health[0] >= HEALTH_CACHE_S:
            body = {
                "upstream": config.upstream,
                "sessions": state.active,
                "max_sessions": config.max_sessions,
                "version": installed(),
            }
            moshi = await asyncio.to_thread(
                check,
                config.upstream,
                config.connect_timeout_s,
                state.upstream_ssl if isinstance(state.upstream_ssl, ssl.SSLContext) else None,
            )
            keep = ("status", "source", "slots_used", "slots_total", "mode", "error", "detail")
            body.update(ok=moshi["up"], moshi={k: moshi[k] for k in keep if k in moshi})
            if moshi.get("error"):
                body["error"] = f"Moshi: {moshi['error']}"
            state.health = (time.monotonic(), 200 if body["ok"] else 503, body)
    _, status, body = state.health
    return web.json_response(body if insider(request) else {"ok": body["ok"]}, status=status)


def insider(request: web.Request) -> bool:
    """The caller may see details and metrics: from metrics_allowed, or with a token of the metrics scope."""
    config = request.app[CONFIG]
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        peer = None
    if peer is not None and any(peer in net for net in request.app[STATE].metrics_networks):
        return True
    return token_ok(request, config.tokens_with("metrics"))


async def metrics(request: web.Request) -> web.Response:
    if not insider(request):
        raise web.HTTPForbidden(
            text="/metrics answers the networks in bridge_metrics_allowed, or a token with the metrics scope\n"
        )
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class ConnectionCap(asyncio.Protocol):
    """One connection to the bridge, counted against its client address in every state (headers
    pending, keep-alive idle, a websocket): over `limit`, its request is answered 429 and the
    connection closed before aiohttp sees it.  A counted connection has `first_byte_s` (the
    header timeout) to send its first byte; with it, it goes to aiohttp's handler, whose own
    timer (keepalive_timeout, shorter) then bounds the rest of its request and each idle wait
    between requests: a kept-alive connection cannot be held by a request every few seconds."""

    REFUSED_WAIT_S = 2.0  # a refused connection that sends no request in this time is aborted
    ALL = ("all",)  # the key of every connection's count

    def __init__(self, make_handler, open_per_address: dict, limit: int, first_byte_s: float, most: int) -> None:
        """`most`: connections in all (LimitNOFILE is sized above it, with room for each session's
        upstream socket): past it a new one is aborted at once, so an admitted caller's upstream
        connection never meets a process out of file descriptors."""
        self.make_handler, self.open, self.limit, self.most = make_handler, open_per_address, limit, most
        self.first_byte_s = first_byte_s
        self.silent: asyncio.TimerHandle | None = None
        self.handler: asyncio.Protocol | None = None
        self.transport: asyncio.Transport
        self.peer = ""
        self.key: str | tuple | None = None  # where it is counted

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer, self.transport = (peer[0] if peer else ""), transport
        if self.open.get(self.ALL, 0) >= self.most:
            transport.abort()
            return
        if self.open.get(self.peer, 0) < self.limit:
            self.key = self.peer
            self.silent = asyncio.get_running_loop().call_later(self.first_byte_s, transport.abort)
        elif self.open.get(("refused", self.peer), 0) < self.limit:
            self.key = ("refused", self.peer)
            asyncio.get_running_loop().call_later(self.REFUSED_WAIT_S, transport.abort)
        else:  # a storm of refused connections: no answer, no wait
            transport.abort()
            return
        self.count(+1)

    def count(self, step: int) -> None:
        for key in (self.key, self.ALL):
            self.open[key] = self.open.get(key, 0) + step
            if not self.open[key]:
                del self.open[key]

    def data_received(self, data: bytes) -> None:
        if self.silent is not None:  # its first bytes: aiohttp takes the connection from here
            self.silent.cancel()
            self.silent = None
            self.handler = self.make_handler()
            self.handler.connection_made(self.transport)
        if self.handler is not None:
            self.handler.data_received(data)
        elif not self.transport.is_closing():  # refused: answered once its request has come
            body = f"at most {self.limit} connections per client address\n".encode()
            head = f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            self.transport.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            self.transport.close()

    def eof_received(self):
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc) -> None:
        if self.silent is not None:
            self.silent.cancel()
        if self.key is not None:
            self.count(-1)
        if self.handler is not None:
            self.handler.connection_lost(exc)


class AccessLog(AbstractAccessLogger):
    """One line per request, its query as parsed (percent-decoded, as the bridge reads it) with the
    value of every credential-bearing key redacted, in any case or encoding."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = [(k, "REDACTED" if k.lower() in CREDENTIALS else v) for k, v in request.query.items()]
        path = request.path + ("?" + urllib.parse.urlencode(query) if query else "")
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, path, response.status, time)


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


async def mint_ticket(request: web.Request) -> web.Response:
    """POST /api/voice/ticket (bridge_ticket_route, for sites with no server code of their own):
    a ticket for the page at the request's Origin, which must be one of allowed_origins, at most
    ticket_rate_per_min a minute per address.  Anyone who can load the page can mint within that
    rate: guarding more (a login) is the operator's own server's job."""
    config, state = request.app[CONFIG], request.app[STATE]
    origin = origin_of(request)
    if origin is None or origin not in config.allowed_origins:
        raise web.HTTPForbidden(
            text=f"tickets are minted for the pages of bridge_allowed_origins; {origin or 'no Origin'} is not one\n"
        )
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Cache-Control": "no-store"}
    if request.method == "OPTIONS":  # a preflight (a page that posts JSON)
        cors.update({"Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type"})
        return web.Response(status=204, headers=cors)
    persona = request.query.get("persona")
    if persona is not None and not persona_name.fullmatch(persona):
        raise web.HTTPBadRequest(text=f"persona must be {NAME_RULE}\n", headers=cors)
    if not state.ticket_rate.allow(request.remote or ""):
        raise web.HTTPTooManyRequests(
            text=f"at most {config.ticket_rate_per_min} tickets a minute per address\n",
            headers={**cors, "Retry-After": "60"},
        )
    assert state.tickets is not None  # the route needs ticket keys (BridgeConfig refuses it without)
    ticket = state.tickets.mint(origin, persona)
    return web.json_response({"ticket": ticket, "expires_in": int(config.ticket_ttl_s)}, headers=cors)


def server_ssl(config: BridgeConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
