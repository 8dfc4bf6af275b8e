"""Sweeps (`-m`) through Hydra's own sweeper and launcher plugins: basic (one after the other),
joblib (local processes) and `cluster` (Ray, with Mac-only jobs routed to Mac workers)."""
