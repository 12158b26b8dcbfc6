"""Who may use the console: access tokens, sessions, CSRF tokens.

Every page and endpoint needs a user: a session cookie (made by logging in with a token,
at `/login` or with `?token=` as in the URL `bus web` prints), or an `Authorization: Bearer
<token>` header (for scripts). Writes (POST) made with a session cookie must carry the
session's CSRF token (`X-CSRF-Token` header or `csrf_token` form field): another site can
make a browser send the cookie, never read the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "bus_web_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000  # the oldest go first


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


@dataclass
class Settings:
    """How a console is run. `users`: user name -> access token. `allow_writes`: calls,
    fires, replays and purges are allowed (else the console is read-only)."""

    users: dict[str, str]
    allow_writes: bool = False
    history_limit: int = 100
    sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    @staticmethod
    def with_new_token(allow_writes: bool = False) -> tuple[Settings, str]:
        """Settings with one user, `operator`, and a fresh random token (returned too)."""
        token = secrets.token_urlsafe(24)
        return Settings({"operator": token}, allow_writes), token

    def user_for_token(self, token: str | None) -> str | None:
        """The user whose token this is (compared in constant time), or None."""
        if not token:
            return None
        found = None
        for user, expected in self.users.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = user
        return found

    def open_session(self, user: str) -> str:
        session_id = secrets.token_urlsafe(32)
        self.sessions[session_id] = Session(user, secrets.token_urlsafe(32),
                                            time.time() + SESSION_SECONDS)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session_id

    def session(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        found = self.sessions.get(session_id)
        if found is None:
            return None
        if found.expires < time.time():
            del self.sessions[session_id]
            return None
        return found

    def close_session(self, session_id: str | None) -> None:
        if session_id:
            self.sessions.pop(session_id, None)


def csrf_matches(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())
