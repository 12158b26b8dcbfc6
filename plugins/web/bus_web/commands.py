"""`bus web`: serve the operations console.

    bus web                         # 127.0.0.1, a free port, a fresh token printed
    bus web --port 8800 --allow-writes
    bus web --host 0.0.0.0          # reachable from elsewhere: a warning says what it means

Read-only unless `--allow-writes` (or `plugins.web.allow_writes: true`). Users with tokens of
their own come from `plugins.web.users` (name -> token); else a random token is made and
printed with the URL, as Jupyter does.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
from typing import Any

from bus_core.cli import CommandFailed, bus_or_bare_client

logger = logging.getLogger("bus.web")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", metavar="ADDRESS",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, metavar="PORT",
                        help="port to listen on (default: a free one)")
    parser.add_argument("--allow-writes", action="store_true", default=None,
                        help="allow calling RPCs, firing events, replaying and purging dead "
                             "letters (default: read-only)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CommandFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from bus_web.app import create_app
    from bus_web.security import Settings

    bus = bus_or_bare_client(getattr(args, "bus", None))
    try:
        if not getattr(args, "log_level", None):
            # Writes are logged at INFO with who made them: that audit trail is on unless
            # a level is given (-l, which `bus` has applied already, or bus.log_level).
            from bus_core.logs import configure

            options = bus.client.config.bus
            chosen = os.environ.get("BUS_LOG_FORMAT") or options.get("log_format") or "text"
            if chosen not in ("text", "json"):
                raise CommandFailed(f"unknown log format {chosen!r}: use 'text' or 'json'")
            configure(options.get("log_level") or "INFO", chosen)
        section: dict[str, Any] = bus.client.config.plugin("web")
        host = args.host or section.get("host") or "127.0.0.1"
        port = args.port if args.port is not None else int(section.get("port") or 0)
        if not 0 <= port <= 65535:
            raise CommandFailed(f"--port {port} is not a port number (0 to 65535)")
        allow = bool(args.allow_writes if args.allow_writes is not None
                     else section.get("allow_writes", False))
        users = section.get("users") or {}
        token = None
        if users:
            settings = Settings(dict(users), allow)
        else:
            settings, token = Settings.with_new_token(allow)
        sock = bind(host, port)
        actual = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{actual}/"
        mode = "writes allowed" if allow else "read-only"
        print(f"bus web: the console is at {url} ({mode})", flush=True)
        if token:
            print(f"bus web: log in with this URL: {url}?token={token}", flush=True)
        else:
            print(f"bus web: log in with your token (users: {', '.join(sorted(users))})",
                  flush=True)
        if not is_loopback(host):
            print(f"bus web: WARNING: listening on {host}, not on loopback: anyone who can "
                  "reach this port can try tokens, and traffic (tokens included) is not "
                  "encrypted. Put it behind a TLS proxy, or use --host 127.0.0.1 and an SSH "
                  "tunnel.", file=sys.stderr, flush=True)
        app = create_app(bus, settings)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                server_header=False)
        server = uvicorn.Server(config)

        async def serve() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:  # this loop's transports, on this loop
                await bus.client.close_async()

        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
        return 0
    finally:
        bus.client.close()


def register_commands(register: Any) -> None:
    register("web", "the operations console in a browser", _setup, _run)
