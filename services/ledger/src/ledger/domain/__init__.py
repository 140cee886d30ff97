"""The ledger's pure domain: no I/O."""
