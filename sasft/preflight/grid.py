"""The preflight of a run or a whole grid: every check of every job, each thing checked once
(a grid of 40 jobs shares 2 models and 5 tasks), every check run whatever the others found."""

from __future__ import annotations

import json
import logging
import time
import warnings
from contextlib import contextmanager

from omegaconf import DictConfig, OmegaConf

from ..config import check_worlds
from ..evaluate import needs_nltk_data
from ..schema import benchmark_spec
from ..schema import check as check_fields
from .benchmarks import check_benchmark
from .check import Check, failed, ok, one_line
from .data import check_corpus, check_task
from .hub import hf_home
from .jobs import is_multirun
from .machine import check_local_gpus, check_nltk, check_storage, check_wandb
from .models import check_model
from . import slurm

# The report's order: what a job composes, loads, reads, scores, writes, then where it runs.
CONFIG, MODEL, DATA, BENCHMARK, NLTK, STORAGE, WANDB, CLUSTER = range(8)
_LIBRARY_LOGGERS = ("datasets", "transformers", "huggingface_hub", "lm_eval", "lm-eval")


@contextmanager
def _quiet():
    """The libraries' own warnings (datasets' "using the latest cached version", ...) would
    drown the report's lines."""
    saved = {n: logging.getLogger(n).level for n in _LIBRARY_LOGGERS}
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


class Checks:
    """The checks made so far, each once per (order, subject)."""

    def __init__(self):
        self.found: dict[tuple[int, str], Check] = {}

    def once(self, order: int, subject, what: str, make) -> Check | None:
        key = (order, json.dumps(subject, sort_keys=True, default=str))
        if key not in self.found:
            try:
                self.found[key] = make()
            except Exception as e:  # noqa: BLE001  (a check that breaks is reported, not raised)
                self.found[key] = failed(what, f"could not be checked ({type(e).__name__}: "
                                               f"{one_line(e)})")
        return self.found[key]

    def sorted(self) -> list[Check]:
        return [c for (order, _), c in sorted(self.found.items(), key=lambda kv: kv[0][0]) if c]


def _config_problem(cfg: DictConfig) -> str | None:
    try:
        check_fields(cfg)
        check_worlds(cfg)
    except Exception as e:  # noqa: BLE001  (ConfigError, or an interpolation that fails)
        return one_line(e)
    return None


def _uses_hub(cfg: DictConfig) -> bool:
    """Whether the job reads the HF cache: a hub model, a hub dataset, an lm-eval benchmark."""
    model, task, method = cfg.model, cfg.task, cfg.method
    return bool((not model.path and model.get("gguf") is None)
                or (task.get("hub_id") and not (task.train_file and task.get("test_file")))
                or (method.get("corpus_hub_id") and not method.get("corpus_file"))
                or any(benchmark_spec(s)["lm_eval_task"] for s in cfg.eval.general.values()))


def _slurm_nodes(launcher) -> list[str]:
    try:
        return slurm.node_names(slurm.chosen_partition(launcher))
    except (slurm.SlurmUnavailable, LookupError):
        return []  # unknown: storage is then judged by its filesystem alone


def check_grid(jobs: list[tuple[list[str], DictConfig | Exception]], master: DictConfig
               ) -> list[Check]:
    """The checks of every job of a composed command line (sasft/preflight/jobs.py)."""
    launcher = master.hydra.launcher
    on_slurm = is_multirun(master) and slurm.is_slurm(launcher)
    nodes = _slurm_nodes(launcher) if on_slurm else None
    checks, bad_configs, needs_gpu, needs_nltk, uses_hub = Checks(), {}, False, False, False
    with _quiet():
        for overrides, cfg in jobs:
            if isinstance(cfg, Exception):  # the job does not compose: nothing else to check
                bad_configs.setdefault(one_line(cfg), overrides)
                continue
            problem = _config_problem(cfg)
            if problem:
                bad_configs.setdefault(problem, overrides)
            checks.once(MODEL, _plain(cfg.model), f"model {cfg.model.name}",
                        lambda: check_model(cfg.model))
            checks.once(DATA, ["task", _plain(cfg.task)], f"task {cfg.task.name}",
                        lambda: check_task(cfg.task))
            checks.once(DATA, ["method", _plain(cfg.method)], f"method {cfg.method.name}",
                        lambda: check_corpus(cfg.method))
            for name, spec in cfg.eval.general.items():
                checks.once(BENCHMARK, [name, benchmark_spec(spec)], f"benchmark {name}",
                            lambda name=name, spec=spec: check_benchmark(name, spec))
            needs_nltk |= needs_nltk_data({**cfg.eval.general, cfg.task.name: cfg.task.benchmark})
            checks.once(STORAGE, ["cache_dir", cfg.cache_dir], "cache_dir",
                        lambda: check_storage("cache_dir", cfg.cache_dir,
                                              "point cache_dir (or SASFT_CACHE)", nodes))
            checks.once(WANDB, _plain(cfg.wandb), "W&B", lambda: check_wandb(cfg.wandb))
            needs_gpu |= cfg.model.world == "real" and cfg.model.get("gguf") is None
            uses_hub |= _uses_hub(cfg)
        if needs_nltk:
            checks.once(NLTK, "nltk", "NLTK data", check_nltk)
        if on_slurm:
            sweep_dir = master.hydra.sweep.dir
            checks.once(STORAGE, ["sweep", sweep_dir], "sweep dir", lambda: check_storage(
                "sweep dir", sweep_dir, "point hydra.sweep.dir", nodes))
            if uses_hub:  # the jobs read the models and datasets the login node put there
                checks.once(STORAGE, "hf", "HF cache", lambda: check_storage(
                    "HF cache", hf_home(), "point HF_HOME", nodes))
            checks.once(CLUSTER, "partition", "SLURM partition",
                        lambda: slurm.check_partition(launcher))
            checks.once(CLUSTER, "account", "SLURM account", lambda: slurm.check_account(launcher))
            checks.once(CLUSTER, "gpus", "SLURM GPUs",
                        lambda: slurm.check_gpus(launcher, needs_gpu))
        else:
            checks.once(CLUSTER, "gpus", "GPUs here", lambda: check_local_gpus(needs_gpu))
    config = [failed(f"config of job {' '.join(o) or '(defaults)'}", problem)
              for problem, o in bad_configs.items()]
    if not config:
        config = [ok("config", f"{len(jobs)} job{'s' if len(jobs) > 1 else ''} composed, every "
                               "field in range")]
    return config + checks.sorted()


def report(checks: list[Check], jobs: int, seconds: float) -> str:
    lines = [c.line() for c in checks]
    bad = sum(c.failed for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    verdict = f"{bad} failed: fix them before you launch" if bad else "all passed"
    lines.append(f"preflight: {len(checks)} checks for {jobs} job{'s' if jobs > 1 else ''} in "
                 f"{seconds:.0f} s, {warned} warning{'s' if warned != 1 else ''}, {verdict}")
    return "\n".join(lines)


def run(loader, master: DictConfig) -> tuple[list[Check], str]:
    """Compose every job of `master` and check them: (the checks, the printed report)."""
    from .jobs import job_configs

    start = time.monotonic()
    jobs = job_configs(loader, master)
    checks = check_grid(jobs, master)
    return checks, report(checks, len(jobs), time.monotonic() - start)
