"""The configs a `run.py` command line would run, composed by Hydra's own machinery: the
same search path (the packaged conf/, plus -cd), the same run mode, and for `-m` the basic
sweeper's own expansion of `hydra.sweeper.params` and comma lists into one config per job, each
composed as the launcher composes it (`load_sweep_config`). Nothing is run or written."""

from __future__ import annotations

import os
from argparse import Namespace

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import SasftError
from ..paths import CONF_MODULE

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def compose(args: Namespace):
    """(config loader, master config) for Hydra's parsed command line `args`, as
    hydra.main sets them up for run.py (hydra/_internal/utils.py::_run_hydra)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    search_path = create_automatic_config_search_path(
        None, None, args.config_path or f"pkg://{CONF_MODULE}")
    if args.config_dir is not None:
        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            raise SasftError(f"config directory not found: {config_dir}")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}")
    GlobalHydra.instance().clear()  # a second composition in one process (tests) starts afresh
    hydra = Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    config_name = args.config_name or "config"
    overrides = list(args.overrides)
    mode = hydra.get_mode(config_name=config_name, overrides=overrides)
    if mode is None or (args.multirun and mode == RunMode.RUN):
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
        overrides.append(f"hydra.mode={mode.name}")
    master = hydra.compose_config(config_name=config_name, overrides=overrides, run_mode=mode,
                                  with_log_configuration=False)
    return hydra.config_loader, master


def is_multirun(master: DictConfig) -> bool:
    return str(OmegaConf.select(master, "hydra.mode")) == "RunMode.MULTIRUN"


def job_overrides(loader, master: DictConfig) -> list[list[str]]:
    """Each job's overrides: the sweeper's params then the command line's, expanded by the basic
    sweeper (as BasicSweeper.sweep does, without writing the sweep directory)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(master.hydra.overrides.task)
    if not is_multirun(master):
        return [task]
    sweeper = master.hydra.sweeper
    if sweeper._target_ != BASIC_SWEEPER:
        raise SasftError(f"sasft-preflight expands sweeps of Hydra's basic sweeper only, not "
                         f"{sweeper._target_}")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + task
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params)
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def job_configs(loader, master: DictConfig) -> list[tuple[list[str], DictConfig | Exception]]:
    """(overrides, config) of every job, the config as the task function receives it (without
    the `hydra` node; the launcher's settings are the master's), or the error that composing
    that job raised: the other jobs are still checked."""
    jobs = []
    for overrides in job_overrides(loader, master):
        try:
            cfg = (loader.load_sweep_config(master, overrides) if is_multirun(master)
                   else master.copy())
        except Exception as e:  # noqa: BLE001  (Hydra's composition errors, of many types)
            jobs.append((overrides, e))
            continue
        with open_dict(cfg):
            del cfg["hydra"]
        jobs.append((overrides, cfg))
    return jobs
