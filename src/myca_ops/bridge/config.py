"""The bridge's settings: one JSON file, rendered by the bridge role from its variables."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from myca_ops.bridge.tickets import MIN_KEY_CHARS
from myca_ops.sessions import Rules

SCOPES = ("session", "metrics")  # a voice session; /metrics and /healthz's details


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it and the fix."""


@dataclass(frozen=True)
class Token:
    """A service token (a server, a probe, a monitoring host: never a browser) and what it may do."""

    value: str
    scopes: frozenset[str]
    plain: bool = False  # given as a bare string, before scopes existed


@dataclass(frozen=True)
class BridgeConfig:
    upstream: str  # ws:// or wss:// URL of Moshi's /api/chat (or of HAProxy in front of several)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8999
    upstream_ca: str = ""  # CA bundle that signed a wss upstream; empty: the system store
    upstream_verify: bool = True
    tokens: tuple[Token, ...] = ()  # service tokens; with no tokens and no ticket keys, no credential is needed
    # Tickets (myca_ops.bridge.tickets): HS256 keys, the first signs; a ticket's longest life;
    # POST /api/voice/ticket on this port (for sites with no server code), per address per minute.
    name: str = ""  # this bridge's name (its inventory name): its tickets must carry it; "": any
    ticket_keys: tuple[str, ...] = ()
    ticket_ttl_s: float = 60.0
    ticket_route: bool = False
    ticket_rate_per_min: int = 10
    allowed_origins: tuple[str, ...] = ()  # empty: any origin
    max_sessions: int = 1  # moshi.server serves one session at a time
    upstream_slots: int = 0  # slots behind the upstream (a pool's total), named in "busy"; 0: not known
    idle_timeout_s: float = 60.0  # close a session when the client sends no audio for this long
    max_message_bytes: int = 65536
    connect_timeout_s: float = 10.0
    mas_url: str = ""  # where session events are POSTed; empty: none
    mas_token: str = ""  # the MAS's events token (mas_events_token), sent as a bearer token
    event_queue_size: int = 1000
    tls_cert: str = ""
    tls_key: str = ""
    # Who sees /metrics and /healthz's details (besides a token holder): networks or host names.
    metrics_allowed: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_connections_per_address: int = 16  # open connections per client address, in any state; more get 429
    max_connections: int = 4096  # open connections in all (the unit's LimitNOFILE is sized above it)
    header_timeout_s: float = 10.0  # a connection that sends nothing in this time is closed
    # From its first byte, a connection's request must be complete, and a kept-alive connection's
    # next one begun, within this: shorter than the gap between an attacker's requests.
    keepalive_timeout_s: float = 2.0
    # A client that has not read for this long (no pong to the bridge's pings, sent 4 times as
    # often) loses its session at once: the connection is aborted, the slot freed.
    write_stall_s: float = 10.0
    max_session_s: float = 3600.0  # a session's longest life; the close reason says so
    max_frames_per_s: int = 200  # a session over it is closed (the web client sends 50 pages a second)
    default_persona: str = ""  # asked of Moshi for a caller whose URL (or ticket) names none
    allow_client_prompts: bool = False  # else text_prompt/voice_prompt are taken out of the caller's URL

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("ws://", "wss://")):
            raise ConfigError(f"upstream must be a ws:// or wss:// URL, got {self.upstream!r} (bridge_upstream)")
        for name in (
            "max_sessions",
            "max_message_bytes",
            "event_queue_size",
            "listen_port",
            "max_connections_per_address",
            "max_connections",
            "max_frames_per_s",
            "ticket_rate_per_min",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r} (bridge_{name})")
        for name in (
            "idle_timeout_s",
            "connect_timeout_s",
            "header_timeout_s",
            "keepalive_timeout_s",
            "write_stall_s",
            "max_session_s",
            "ticket_ttl_s",
        ):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r} (bridge_{name})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: set both or neither (bridge_tls_cert, bridge_tls_key)")
        if any(len(t.value) < 16 for t in self.tokens):
            raise ConfigError(
                "every token must be at least 16 characters (bridge_tokens); make one with `openssl rand -hex 24`"
            )
        for token in self.tokens:
            if not token.scopes or not token.scopes <= set(SCOPES):
                raise ConfigError(
                    f"a token's scopes are {sorted(token.scopes)}: give it one or more of {', '.join(SCOPES)} (bridge_tokens)"
                )
        if any(len(k) < MIN_KEY_CHARS for k in self.ticket_keys):
            raise ConfigError(
                f"every ticket key must be at least {MIN_KEY_CHARS} characters (bridge_ticket_keys); "
                "make one with `openssl rand -hex 32`"
            )
        if self.ticket_route and not self.ticket_keys:
            raise ConfigError("ticket_route needs ticket_keys to sign with (bridge_ticket_route, bridge_ticket_keys)")
        if self.ticket_route and not self.allowed_origins:
            raise ConfigError(
                "ticket_route mints tickets for the pages of allowed_origins, and it is empty: set "
                'bridge_allowed_origins to the site\'s origin(s), e.g. ["https://myca.example"]'
            )

    @property
    def open(self) -> bool:
        """No credential at all is asked for (a trusted network)."""
        return not self.tokens and not self.ticket_keys

    def tokens_with(self, scope: str) -> tuple[str, ...]:
        return tuple(t.value for t in self.tokens if scope in t.scopes)

    def rules(self) -> Rules:
        """The session rules (myca_ops.sessions), the batched server's too."""
        return Rules(self.write_stall_s, self.idle_timeout_s, self.max_session_s, self.max_frames_per_s)

    def metrics_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """metrics_allowed as networks; a host name stands for every address it resolves to now."""
        networks = []
        for entry in self.metrics_allowed:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            try:
                infos = socket.getaddrinfo(entry, None)
            except OSError as exc:
                raise ConfigError(
                    f"metrics_allowed: {entry!r} is neither a network nor a name that resolves ({exc})"
                ) from exc
            networks += [ipaddress.ip_network(info[4][0]) for info in infos]
        return networks

    @classmethod
    def from_dict(cls, data: dict) -> BridgeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "upstream" not in data:
            raise ConfigError("upstream is required: the ws:// URL of Moshi's /api/chat (bridge_upstream)")
        values = dict(data)
        for name in ("allowed_origins", "metrics_allowed", "ticket_keys"):
            if name in values:
                values[name] = tuple(values[name] or ())
        values["tokens"] = tuple(parse_token(entry) for entry in values.get("tokens") or ())
        return cls(**values)

    def warnings(self) -> list[str]:
        if any(t.plain for t in self.tokens):
            return [
                "a bridge token given as a plain string has the session scope only (no /metrics); write it as "
                "{token: T, scopes: [session]} or [session, metrics] in bridge_tokens"
            ]
        return []

    @classmethod
    def load(cls, path: str | Path) -> BridgeConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the bridge config {path}: {exc}") from exc
        return cls.from_dict(data)


def parse_token(entry) -> Token:
    """A bridge_tokens entry: {token: T, scopes: [...]}, or a plain string (the session scope, as before scopes)."""
    if isinstance(entry, str):
        return Token(entry, frozenset({"session"}), plain=True)
    if isinstance(entry, dict) and set(entry) <= {"token", "scopes"} and isinstance(entry.get("token"), str):
        scopes = entry.get("scopes", ["session"])
        if isinstance(scopes, list) and all(isinstance(x, str) for x in scopes):
            return Token(entry["token"], frozenset(scopes))
    raise ConfigError(
        "a bridge_tokens entry must be {token: T, scopes: [session, metrics]} (or a plain token string), "
        f"got a {type(entry).__name__} with {sorted(entry) if isinstance(entry, dict) else 'no keys'}"
    )
