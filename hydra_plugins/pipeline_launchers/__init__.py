"""The pipeline's Hydra launcher plugins (found by Hydra through the hydra_plugins namespace)."""
