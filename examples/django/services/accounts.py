"""The accounts service's implementation of the declared AccountsApi.

No `Meta` here: a subclass of a declared API implements that API (same name and events), and
its RPCs must take the parameters the declaration promises.
"""

from __future__ import annotations

import threading

from services.accounts_api import AccountsApi, UnknownUser, UsernameTaken, UserRecord


class AccountsService(AccountsApi):
    """The store is a dict in the worker's memory, enough for an example. Sync RPCs run in the
    worker's thread pool, several at once, hence the lock."""

    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}
        self._lock = threading.Lock()

    def create_user(self, username: str, email: str) -> UserRecord:
        if "@" not in email.strip("@"):
            raise ValueError(f"{email!r} is not an email address")
        with self._lock:
            if username in self._users:
                raise UsernameTaken(f"username {username!r} is taken")
            user = UserRecord(id=len(self._users) + 1, username=username, email=email)
            self._users[username] = user
        return user

    def get_user(self, username: str) -> UserRecord:
        with self._lock:
            user = self._users.get(username)
        if user is None:
            raise UnknownUser(f"no user {username!r}")
        return user
