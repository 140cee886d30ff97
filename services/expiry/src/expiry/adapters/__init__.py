"""adapters of expiry-scheduler."""
