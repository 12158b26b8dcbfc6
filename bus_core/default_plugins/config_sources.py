"""The default config sources: plain paths and `file://` URLs, and `http(s)://` URLs."""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bus_core.config import read_text_file
from bus_core.errors import ConfigError
from bus_core.plugins import hookimpl

HTTP_TIMEOUT = 10.0


def read_url(location: str) -> str:
    """Fetch a config document over HTTP(S); errors name the URL without its password."""
    shown = _without_password(location)
    parts = urllib.parse.urlsplit(location)
    request = urllib.request.Request(location)
    if parts.username is not None:  # user:password@host -> HTTP basic auth
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
        credentials = f"{urllib.parse.unquote(parts.username)}:" \
                      f"{urllib.parse.unquote(parts.password or '')}"
        token = base64.b64encode(credentials.encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"cannot read config from {shown}: HTTP {exc.code} {exc.reason}") \
            from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot read config from {shown}: {reason}") from None
    return body.decode("utf-8")


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@hookimpl
def bus_register_config_sources(register: Any) -> None:
    register("file", read_text_file)
    register(("http", "https"), read_url)
