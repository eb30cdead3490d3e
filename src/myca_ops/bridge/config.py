"""The bridge's settings: one JSON file, rendered by the bridge role from its variables."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from myca_ops.sessions import Rules


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it and the fix."""


@dataclass(frozen=True)
class BridgeConfig:
    upstream: str  # ws:// or wss:// URL of Moshi's /api/chat (or of HAProxy in front of several)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8999
    upstream_ca: str = ""  # CA bundle that signed a wss upstream; empty: the system store
    upstream_verify: bool = True
    tokens: tuple[str, ...] = ()  # empty: no token needed
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
    max_connections_per_address: int = 16  # open requests per client address; more get HTTP 429
    header_timeout_s: float = 10.0  # a connection that sends no complete request in this time is closed
    # A client that has not read for this long (no pong to the bridge's pings, sent 4 times as
    # often) loses its session at once: the connection is aborted, the slot freed.
    write_stall_s: float = 10.0
    max_session_s: float = 3600.0  # a session's longest life; the close reason says so
    max_frames_per_s: int = 200  # a session over it is closed (the web client sends 50 pages a second)

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("ws://", "wss://")):
            raise ConfigError(f"upstream must be a ws:// or wss:// URL, got {self.upstream!r} (bridge_upstream)")
        for name in (
            "max_sessions",
            "max_message_bytes",
            "event_queue_size",
            "listen_port",
            "max_connections_per_address",
            "max_frames_per_s",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r} (bridge_{name})")
        for name in ("idle_timeout_s", "connect_timeout_s", "header_timeout_s", "write_stall_s", "max_session_s"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r} (bridge_{name})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: set both or neither (bridge_tls_cert, bridge_tls_key)")
        if any(not t or len(t) < 16 for t in self.tokens):
            raise ConfigError(
                "every token must be at least 16 characters (bridge_tokens); make one with `openssl rand -hex 24`"
            )

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
        for name in ("tokens", "allowed_origins", "metrics_allowed"):
            if name in values:
                values[name] = tuple(values[name] or ())
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> BridgeConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the bridge config {path}: {exc}") from exc
        return cls.from_dict(data)
