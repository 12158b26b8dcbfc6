"""Django helpers. With `plugins.outbox.django: true`:

- a fire inside `transaction.atomic()` (or a view under ATOMIC_REQUESTS) is written to the
  outbox through Django's connection of that thread, in that transaction;
- a sync transactional listener runs inside `transaction.atomic()` on the
  `django_database` connection, with the inbox mark, so its ORM writes and the mark commit
  together.

`uses_django_db` is for other listeners and tasks that touch the ORM from the worker's
thread pool: it drops connections Django would have dropped at the end of a request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def uses_django_db(function: F) -> F:
    """Decorator for a sync handler that uses the Django ORM outside a request: close
    connections that are broken or past CONN_MAX_AGE before and after each call, as Django
    does around a request (a worker thread otherwise keeps a dead connection for ever)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from django.db import close_old_connections

        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return wrapper  # type: ignore[return-value]


def in_atomic_block(alias: str = "default") -> bool:
    """True inside `transaction.atomic(using=alias)` on this thread: a fire here goes to the
    outbox (with `django: true`)."""
    from django.db import connections

    return bool(connections[alias].in_atomic_block)
