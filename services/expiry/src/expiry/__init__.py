"""The expiry-scheduler service."""
