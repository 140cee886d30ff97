"""adapters of reward-fulfilment."""
