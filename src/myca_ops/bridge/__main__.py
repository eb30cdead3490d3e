"""myca-bridge serve|check --config FILE: run the bridge (systemd's myca-bridge unit), or check its settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import uvloop
from aiohttp import web

from myca_ops.bridge.app import make_app
from myca_ops.bridge.config import BridgeConfig, ConfigError
from myca_ops.bridge.listener import AccessLog, ConnectionCap, RedactCredentials, server_ssl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="myca-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="relay /api/chat to the upstream Moshi")
    serve.add_argument("--config", required=True, help="the JSON settings file (written by the bridge role)")
    check = sub.add_parser("check", help="check a settings file and exit (the role validates with it)")
    check.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # on the handler: it sees every logger's records
        handler.addFilter(RedactCredentials())
    try:
        config = BridgeConfig.load(args.config)
        ssl_context = server_ssl(config)
        config.metrics_networks()  # a name in metrics_allowed that does not resolve is an error now
    except (ConfigError, OSError) as exc:
        print(f"myca-bridge: {exc}", file=sys.stderr)
        return 2
    for warning in config.warnings():
        print(f"myca-bridge: WARNING: {warning}", file=sys.stderr)
    if args.command == "check":
        print(f"myca-bridge: {args.config} is valid")
        return 0
    logging.getLogger("myca_ops.bridge").info(
        "relaying %s://%s:%d/api/chat to %s, at most %d session(s)",
        "wss" if ssl_context else "ws",
        config.listen_host,
        config.listen_port,
        config.upstream,
        config.max_sessions,
    )
    # uvloop: about half the CPU per relayed message of asyncio's own loop.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run_server(config, ssl_context))
    return 0


async def run_server(config: BridgeConfig, ssl_context) -> None:
    """aiohttp's server for the app, each connection counted against its client address
    (ConnectionCap), until SIGTERM or SIGINT; then a graceful shutdown, as web.run_app does."""
    runner = web.AppRunner(
        make_app(config),
        access_log_class=AccessLog,
        keepalive_timeout=config.keepalive_timeout_s,  # from a connection's first byte (ConnectionCap)
    )
    await runner.setup()
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    open_per_address: dict = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: ConnectionCap(
            runner.server,
            open_per_address,
            config.max_connections_per_address,
            config.header_timeout_s,
            config.max_connections,
        ),
        config.listen_host,
        config.listen_port,
        ssl=ssl_context,
        # A TLS handshake comes before the connection is counted: it gets the header timeout, not asyncio's 60 s.
        ssl_handshake_timeout=config.header_timeout_s if ssl_context else None,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
