"""The bridge's listening socket: connections counted per address and in all before aiohttp sees
them, TLS, and logs with no credential in them."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import urllib.parse

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from myca_ops.bridge.config import BridgeConfig
from myca_ops.bridge.state import CREDENTIALS


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


def server_ssl(config: BridgeConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context
