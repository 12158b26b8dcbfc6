"""The demo's two APIs: `stock` (served by the worker) and `warehouse` (whose event the
demo fires and the worker hears)."""

from __future__ import annotations

from bus_core import Api, Event


class WarehouseApi(Api):
    """The warehouse tells everyone when goods arrive."""

    restocked = Event(parameters=("item", "count"))

    class Meta:
        name = "warehouse"


class StockApi(Api):
    """Reserve items; ask how many are left."""

    class Meta:
        name = "stock"

    def __init__(self) -> None:
        self.levels: dict[str, int] = {"apple": 3}

    def reserve(self, item: str, count: int) -> bool:
        """Take `count` of `item` if there are that many."""
        if self.levels.get(item, 0) < count:
            return False
        self.levels[item] -= count
        return True

    def level(self, item: str) -> int:
        return self.levels.get(item, 0)
