"""Orders: a model saved and an event fired in one transaction (the outbox), and a listener
that writes with the inbox. Needs a PostgreSQL database ($DATABASE_URL) and outbox.yaml."""
