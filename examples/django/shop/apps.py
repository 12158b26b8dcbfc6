"""The shop app's config: checks the bus config when Django starts."""

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self) -> None:
        """Create the bus client now, so a bad $BUS_CONFIG stops the process at boot rather
        than failing the first request. Creating connects nothing and starts no thread, so
        this is safe in gunicorn's master under --preload (the child makes its own)."""
        from shop.bus import get_bus

        get_bus()
