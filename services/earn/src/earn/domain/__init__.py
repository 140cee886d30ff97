"""The earn service's pure domain: identifier normalisation and the earning rules (no I/O)."""
