"""Tests compose the real `conf/` tree, shrink it, and call the same function run.py calls."""

from __future__ import annotations

import os

# Two cores, often shared: spinning OpenMP threads slow torch many times over when another
# process competes for a core. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from sasft.config import compose_config  # noqa: E402, F401  (tests import it from here)


def shrink(cfg: DictConfig, tmp_path) -> DictConfig:
    """A few dozen examples, one short epoch, a handful of eval items: seconds, not minutes."""
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
        cfg.task.max_train_examples = 24
        cfg.train.epochs = 1
        cfg.train.batch_size = 8
        cfg.train.logging_steps = 1
        cfg.train.save_model = False
        cfg.eval.limit = 8
        cfg.generation.batch_size = 32
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """The default config (toy model, sasft), shrunk for tests."""
    return shrink(compose_config(), tmp_path)


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str) -> DictConfig:
        return shrink(compose_config(overrides), tmp_path)

    return _make


@pytest.fixture(scope="module")
def toy():
    """The default toy model, its tokenizer and config, loaded once per test module."""
    from sasft.model import load_model  # torch: only for the tests that ask for a model

    cfg = compose_config()
    model, tokenizer = load_model(cfg.model)
    model.eval()
    return model, tokenizer, cfg
