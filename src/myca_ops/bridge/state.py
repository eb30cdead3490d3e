"""What the bridge's routes share: its settings and state (metrics, sessions, tickets, the upstream's
TLS), the per-address rate limit, and how a request's token and Origin are read."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import ssl
import time
from collections import OrderedDict

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from myca_ops.bridge.config import BridgeConfig
from myca_ops.bridge.events import EventSink
from myca_ops.bridge.tickets import Tickets
from myca_ops.voice.protocol import client_ssl

KINDS = {0: "handshake", 1: "audio", 2: "text", 3: "control", 4: "metadata", 5: "error", 6: "ping"}
CREDENTIALS = ("token", "ticket")  # query parameters the upstream never sees
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


def origin_of(request: web.Request) -> str | None:
    """The request's Origin, or 400: two Origin headers (which would be taken at the first), or one no
    browser sends (bytes outside printable ASCII, which no error text could even quote)."""
    origins = request.headers.getall("Origin", [])
    if len(origins) > 1:
        raise web.HTTPBadRequest(text="one Origin header, not several\n")
    if origins and not (origins[0].isascii() and origins[0].isprintable()):
        raise web.HTTPBadRequest(text="the Origin header is not an origin (printable ASCII)\n")
    return origins[0] if origins else None
