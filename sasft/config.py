"""Config helpers: where `conf/` lives, the `${sasft_pkg:...}` resolver, and the checks that
turn bad input into a clear error before any model is loaded or trained."""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"



def _run_path(*, _root_) -> str:
    from .rundir import run_path

    return run_path(_root_)


# `${sasft_pkg:...}`: a path inside the installed package (the toy world's data and
# checkpoints), wherever it lives. `${sasft_run_path:}`: a run's directory, named by its
# identity (hydra.run.dir and hydra.sweep.subdir in conf/config.yaml).
for _name, _resolver in (("sasft_pkg", lambda rel: str(PACKAGE_DIR / rel)),
                         ("sasft_run_path", _run_path)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


class SasftError(Exception):
    """A problem the user can fix, told in one line: the command prints the message alone,
    without a traceback (a traceback means a bug)."""


class ConfigError(SasftError, ValueError):
    """A configuration value that cannot work; the message names the field."""


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model weights. Checks needing the model's shape (how many
    layers it has) run right after loading it, still before any data is generated."""
    ratio = cfg.mix_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ConfigError(f"mix_ratio must be a finite number >= 0, got {ratio!r}")
    if ratio < 0:
        raise ConfigError(f"mix_ratio must be >= 0, got {ratio}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")

    check_worlds(cfg)
    model = cfg.model
    if model.get("path"):
        path = Path(model.path)
        if not path.exists() and "toy" not in model:
            raise ConfigError(f"model.path does not exist: {path}")
        if path.exists() and not (path / "config.json").is_file():
            raise ConfigError(f"model.path has no config.json, so it is not a model: {path}")
    elif not model.get("hub_id"):
        raise ConfigError("model needs a local `path` or a `hub_id`")

    backend = cfg.generation.get("backend", "hf")
    if backend not in ("hf", "vllm"):
        raise ConfigError(f"generation.backend must be one of hf, vllm; got {backend!r}")

    if cfg.train.get("use_liger_kernel"):
        import torch

        missing = []
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU")
        if find_spec("liger_kernel") is None:
            missing.append("liger-kernel (pip install -e '.[liger]')")
        if missing:
            raise ConfigError(f"train.use_liger_kernel=true needs {' and '.join(missing)}; "
                              "or set train.use_liger_kernel=false")

    frozen = cfg.method.get("frozen_layers")
    if frozen is not None and (not isinstance(frozen, int) or frozen < 0):
        raise ConfigError(f"method.frozen_layers must be an integer >= 0, got {frozen!r}")
    trainable = cfg.method.get("trainable_layers")
    if trainable is not None and (not isinstance(trainable, int) or trainable < 0):
        raise ConfigError(f"method.trainable_layers must be an integer >= 0, got {trainable!r}")
    if frozen is not None and trainable is not None:
        raise ConfigError("set method.frozen_layers or method.trainable_layers, not both")


# The groups whose settings belong to one world, and the options of each world.
_WORLD_OPTIONS = {"toy": {"train": "default", "eval": "toy", "generation": "default"},
                  "real": {"train": "full or train=lora", "eval": "general", "generation": "chat"}}


def check_worlds(cfg: DictConfig) -> None:
    """The toy world's settings with a real model, or a real model's with a toy one, make a run
    that measures nothing: the toy schedule (lr 1e-3) wrecks a real model, the toy benchmarks
    ask a real model made-up facts, toy generation drops a real model's answers as truncated."""
    if cfg.allow_world_mismatch:
        return
    world = cfg.model.world
    for group, option in _WORLD_OPTIONS[world].items():
        if cfg[group].world != world:
            raise ConfigError(
                f"model={cfg.model.name} is a {world} model, but {group}.world is "
                f"{cfg[group].world}: use {group}={option} (or allow_world_mismatch=true to run "
                "the mix anyway)")


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `run.py` would get with these command-line overrides, without running
    Hydra's app (for scripts, benchmarks and tests)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
