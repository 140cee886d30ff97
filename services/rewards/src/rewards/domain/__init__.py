"""domain of reward-fulfilment."""
