"""earn entrypoints: Kafka subscribers and HTTP routes."""
