"""The ledger's adapters: Postgres."""
