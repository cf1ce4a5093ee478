"""The configs, shipped as sasft.conf so that Hydra finds them after any install (pkg://sasft.conf)."""
