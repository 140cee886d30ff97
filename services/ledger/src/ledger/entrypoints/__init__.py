"""The ledger's entrypoints: Kafka subscribers and HTTP routes."""
