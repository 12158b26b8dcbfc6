"""Hiding secrets in URLs before they are shown: the one helper every log line, error message
and CLI output uses for a URL that may hold a password (Redis URLs, config-source URLs).

Works on text, not on a parsed URL, so that a malformed URL (an unbalanced `[`, a port out of
range) is masked too: those are exactly the URLs that end up in error messages.
"""

from __future__ import annotations

import re

MASK = "***"

# Query parameters whose value is a credential (matched as a part of the lowercased name:
# `password`, `access_token`, `X-Amz-Signature`, `api_key`, ...).
_SECRET_QUERY_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "signature",
                       "credential")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")


def _secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_QUERY_WORDS)


def redact_url(url: str) -> str:
    """`url` with the password of its user part (or the whole user part when it has no
    password: it may be a token) and the values of credential-like query parameters replaced
    by `***`; the user name, host, port, path and other parameters stay, so the message still
    says where. Anything that is not a `scheme://` URL is returned as
    it is."""
    scheme_end = url.find("://")
    if scheme_end <= 0:
        return url
    start = scheme_end + 3
    authority_end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found != -1:
            authority_end = min(authority_end, found)
    authority = url[start:authority_end]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        # A lone user part may be a token (`https://TOKEN@host/`): masked as well.
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    rest = url[authority_end:]
    path, question, query = rest.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        parameters = []
        for parameter in query.split("&"):
            name, equals, _value = parameter.partition("=")
            parameters.append(f"{name}={MASK}" if equals and _secret_parameter(name)
                              else parameter)
        rest = f"{path}?{'&'.join(parameters)}{hash_mark}{fragment}"
    return f"{url[:start]}{authority}{rest}"


# `password=...` in a key=value connection string (libpq's `host=db password=s3cret`):
# the value, quoted or not, is masked wherever it appears.
_KEYWORD_SECRET = re.compile(r"\b(password|passwd|pwd|sslpassword)(\s*=\s*)"
                             r"('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with every `scheme://...` URL in it passed through `redact_url`, and every
    `password=...` of a key=value connection string masked: the last line of defence for
    messages that quote a value (a schema error repeats the bad URL)."""
    text = _URL.sub(lambda match: redact_url(match.group(0)), text)
    return _KEYWORD_SECRET.sub(lambda match: f"{match.group(1)}{match.group(2)}{MASK}", text)
