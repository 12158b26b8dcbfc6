"""bus-outbox: transactional events on PostgreSQL. Fires inside a database transaction are
written to an outbox table and published by a relay after commit; transactional listeners run
with an inbox that makes each event's effects happen once. See docs/howto/transactional-events.md.
"""

from bus_outbox.outbox import OutboxError, current_connection, transaction, using
from bus_outbox.stats import OutboxStats, stats_for

__all__ = ["OutboxError", "OutboxStats", "current_connection", "stats_for", "transaction",
           "using"]
