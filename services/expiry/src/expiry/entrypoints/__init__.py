"""entrypoints of expiry-scheduler."""
