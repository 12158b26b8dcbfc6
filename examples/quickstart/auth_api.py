"""The API the quickstart service offers: one RPC and one event."""

from __future__ import annotations

from bus_core import Api, Event, Parameter


class AuthApi(Api):
    """Accounts: check passwords, announce new users."""

    user_registered = Event(parameters=[
        Parameter("username", str),
        Parameter("email", str),
        Parameter("is_admin", bool, default=False),
    ])

    class Meta:
        name = "auth"

    def check_password(self, username: str, password: str) -> bool:
        """True when `password` is right for `username`."""
        return username == "admin" and password == "secret"
