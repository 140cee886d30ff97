"""earn adapters: Postgres."""
