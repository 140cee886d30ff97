"""domain of expiry-scheduler."""
