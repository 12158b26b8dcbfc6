"""The accounts API: what the accounts service offers on the bus, declared once.

Both sides import this module. The service implements the declaration
(`services/accounts.py`) and serves that; the Django app (`shop/bus.py`) registers the
declaration itself, to be allowed to fire `user_signed_up` and to have its calls' arguments
checked before they are sent. It runs no worker, so it serves nothing.
"""

from __future__ import annotations

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

    The declaration only: names, parameters, return types, the event. The service implements
    it in `services/accounts.py`; the web app needs nothing more than this module.
    """

    user_signed_up = Event(parameters=[
        Parameter("user_id", int),
        Parameter("username", str),
        Parameter("email", str),
    ])

    class Meta:
        name = "accounts"

    def create_user(self, username: str, email: str) -> UserRecord:
        """Store a new user; ValueError for a malformed email, UsernameTaken for a duplicate."""
        raise NotImplementedError  # served by services.accounts.AccountsService

    def get_user(self, username: str) -> UserRecord:
        """The user called `username`, or UnknownUser."""
        raise NotImplementedError
