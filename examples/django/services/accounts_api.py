"""The accounts API: what the accounts service offers on the bus.

Both sides import this module. The service (`services/bus.py`, run by `bus run`) serves it;
the Django app (`shop/bus.py`) registers it too, but runs no worker, so it serves nothing: it
registers the API to be allowed to fire `user_signed_up` and to have its calls' arguments
checked before they are sent.
"""

from __future__ import annotations

import threading
from typing import TypedDict

from bus_core import Api, Event, Parameter


class UserRecord(TypedDict):
    """A user as the RPCs return it."""

    id: int
    username: str
    email: str


class UsernameTaken(Exception):
    """create_user() for a username that exists; the web app answers 409."""


class UnknownUser(LookupError):
    """get_user() for a username that does not exist; the web app answers 404."""


class AccountsApi(Api):
    """Users: create and look up accounts, announce sign-ups.

    The store is a dict in the worker's memory, enough for an example. Sync RPCs run in the
    worker's thread pool, several at once, hence the lock.
    """

    user_signed_up = Event(parameters=[
        Parameter("user_id", int),
        Parameter("username", str),
        Parameter("email", str),
    ])

    class Meta:
        name = "accounts"

    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}
        self._lock = threading.Lock()

    def create_user(self, username: str, email: str) -> UserRecord:
        """Store a new user; ValueError for a malformed email, UsernameTaken for a duplicate."""
        if "@" not in email.strip("@"):
            raise ValueError(f"{email!r} is not an email address")
        with self._lock:
            if username in self._users:
                raise UsernameTaken(f"username {username!r} is taken")
            user = UserRecord(id=len(self._users) + 1, username=username, email=email)
            self._users[username] = user
        return user

    def get_user(self, username: str) -> UserRecord:
        """The user called `username`, or UnknownUser."""
        with self._lock:
            user = self._users.get(username)
        if user is None:
            raise UnknownUser(f"no user {username!r}")
        return user
