"""The reward-fulfilment service."""
