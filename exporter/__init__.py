"""Parameter deltas to object storage and the delta consumer SDK (no torch, no pyflink)."""
