"""Config helpers: where the configs live, the resolvers they use, and the checks that turn bad
input into a clear error before any model is loaded or trained."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, SasftError, refuse
from .evaluate import check_test_file
from .paths import CONF_MODULE, PACKAGE_DIR
from .rundir import remove_unstarted_sweep, run_path
from .schema import check, register
from .task import check_task, is_mapped

register()


def _run_path(*, _root_) -> str:
    # Hydra creates the run's directory right after naming it here, before the app runs: a
    # config that cannot run is refused now, so it leaves no directory, W&B run or cache entry.
    # Raised, the error would reach Hydra's handler, which prints a traceback.
    try:  # without `hydra`, whose run.dir is this very resolver
        validate(OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"]))
    except SasftError as e:
        if _root_.hydra.mode == RunMode.MULTIRUN:  # a swept value: Hydra recorded the sweep
            remove_unstarted_sweep(Path(_root_.hydra.sweep.dir))
        refuse(e)
    return run_path(_root_)


class CheckSweepValues(Callback):
    """`-m`: the values every job shares (those not swept) checked for range and type before
    Hydra writes the sweep's directory, so a mistyped value leaves nothing behind; a bad swept
    value is refused by its own job, before that job's directory exists (`_run_path`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
        except SasftError as e:
            refuse(e)


# `${sasft_pkg:...}`: a path inside the installed package (the toy world's data and
# checkpoints), wherever it lives. `${sasft_run_path:}`: a run's directory, named by its
# identity (hydra.run.dir and hydra.sweep.subdir in conf/config.yaml).
for _name, _resolver in (("sasft_pkg", lambda rel: str(PACKAGE_DIR / rel)),
                         ("sasft_run_path", _run_path)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model weights: each field's type (Hydra, at composition) and
    range (sasft/schema.py), then what depends on several fields or on the machine. Checks
    needing the model's shape run right after, from its config alone."""
    check(cfg)
    check_worlds(cfg)
    check_task(cfg.task)
    local = {f"eval.general.{name}": spec for name, spec in cfg.eval.general.items()}
    if not is_mapped(cfg.task):  # a mapped task's test file is prepared later, by sasft/task.py
        local["task.benchmark"] = cfg.task.benchmark
    for key, spec in local.items():
        if spec.get("file"):
            check_test_file(key, spec)
    model = cfg.model
    if model.path:
        path = Path(model.path)
        if not path.exists() and not model.builder:
            raise ConfigError(f"model.path does not exist: {path}")
        if path.exists() and not (path / "config.json").is_file():
            raise ConfigError(f"model.path has no config.json, so it is not a model: {path}")
    elif not model.hub_id and not model.get("gguf"):
        raise ConfigError("model needs a local `path`, a `gguf` file or a `hub_id`")

    if cfg.train.use_liger_kernel:
        import torch

        missing = []
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU")
        if find_spec("liger_kernel") is None:
            missing.append("liger-kernel (pip install -e '.[liger]')")
        if missing:
            raise ConfigError(f"train.use_liger_kernel=true needs {' and '.join(missing)}; "
                              "or set train.use_liger_kernel=false")


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
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides))
