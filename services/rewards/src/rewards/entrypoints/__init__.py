"""entrypoints of reward-fulfilment."""
