"""The default config sources: plain paths and `file://` URLs, and `http(s)://` URLs.

An HTTP(S) URL may carry credentials (`https://user:password@host/bus.yaml`), sent as HTTP
basic auth. They go only to the URL's own origin (scheme, host and port): a redirect
elsewhere is followed without them. Redirects are followed at most MAX_REDIRECTS times, to
http(s) only and never from https down to plain http; the document may be at most
MAX_CONFIG_BYTES. Credentials are not sent over plain http:// except to a loopback host,
unless BUS_CONFIG_ALLOW_INSECURE_CREDENTIALS=1.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bus_core.config import MAX_CONFIG_BYTES, decode_document, read_text_file
from bus_core.errors import ConfigError
from bus_core.plugins import hookimpl
from bus_core.redaction import redact_text, redact_url

HTTP_TIMEOUT = 10.0  # seconds per connect or read
HTTP_DEADLINE = 30.0  # seconds for the whole fetch, redirects included
MAX_REDIRECTS = 5
INSECURE_CREDENTIALS_ENV = "BUS_CONFIG_ALLOW_INSECURE_CREDENTIALS"
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand every redirect back to read_url, which decides where credentials may go."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_userinfo(parts: urllib.parse.SplitResult) -> str:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _basic_auth(parts: urllib.parse.SplitResult) -> str | None:
    """The Authorization header for the user:password in `parts`, if any."""
    if parts.username is None:
        return None
    credentials = f"{urllib.parse.unquote(parts.username)}:" \
                  f"{urllib.parse.unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


def _split(url: str, shown: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as exc:
        raise ConfigError(f"cannot read config from {shown}: malformed URL "
                          f"({redact_text(str(exc))})") from None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"cannot read config from {shown}: not an http(s):// URL with a host")
    return parts


def read_url(location: str) -> str:
    """Fetch a config document over HTTP(S) (see the module's docstring for the rules);
    errors name the URL without its credentials."""
    shown = redact_url(location)
    parts = _split(location, shown)
    authorization = _basic_auth(parts)
    home = _origin(parts)
    if authorization and home[0] == "http" and not _is_loopback(home[1]) \
            and os.environ.get(INSECURE_CREDENTIALS_ENV) != "1":
        raise ConfigError(
            f"cannot read config from {shown}: refusing to send credentials over plain http:// "
            f"(anyone on the way could read them); use https://, or set "
            f"{INSECURE_CREDENTIALS_ENV}=1 to allow it")
    url = _without_userinfo(parts)
    opener = urllib.request.build_opener(_NoRedirects)
    deadline = time.monotonic() + HTTP_DEADLINE
    for _ in range(MAX_REDIRECTS + 1):
        where = shown if url == _without_userinfo(parts) else \
            f"{shown} (redirected to {redact_url(url)})"
        request = urllib.request.Request(url)
        if authorization and _origin(urllib.parse.urlsplit(url)) == home:
            request.add_header("Authorization", authorization)
        try:
            with opener.open(request, timeout=HTTP_TIMEOUT) as response:
                return decode_document(_read_bounded(response, where, deadline), where)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                target = exc.headers.get("Location") if exc.code in _REDIRECT_CODES else None
                if not target:
                    raise ConfigError(f"cannot read config from {where}: HTTP {exc.code} "
                                      f"{exc.reason}") from None
            url = _redirect(url, target, where)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"cannot read config from {where}: "
                              f"{redact_text(str(reason))}") from None
        if time.monotonic() > deadline:
            break
    raise ConfigError(f"cannot read config from {shown}: more than {MAX_REDIRECTS} redirects "
                      f"or {HTTP_DEADLINE:g}s; point the config at the final URL")


def _redirect(url: str, target: str, where: str) -> str:
    """Where a redirect from `url` to `target` leads: http(s) only, never a downgrade from
    https to http; any credentials in the target are dropped (never sent)."""
    following = urllib.parse.urljoin(url, target.strip())
    parts = _split(following, f"{where}, redirected to {redact_url(following)}")
    scheme = parts.scheme.lower()
    if urllib.parse.urlsplit(url).scheme.lower() == "https" and scheme == "http":
        raise ConfigError(f"cannot read config from {where}: refusing a redirect from https "
                          f"to plain http ({redact_url(following)})")
    return _without_userinfo(parts)


def _read_bounded(response: Any, where: str, deadline: float) -> bytes:
    """The response body, refused past MAX_CONFIG_BYTES (or the deadline) rather than read
    into memory whatever its size."""
    too_large = ConfigError(f"cannot read config from {where}: the response is larger than "
                            f"{MAX_CONFIG_BYTES // 1024} KiB; a config is a few KB")
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > MAX_CONFIG_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise too_large
        if time.monotonic() > deadline:
            raise ConfigError(f"cannot read config from {where}: not received within "
                              f"{HTTP_DEADLINE:g}s")
        chunks.append(chunk)


@hookimpl
def bus_register_config_sources(register: Any) -> None:
    register("file", read_text_file)
    register(("http", "https"), read_url)
