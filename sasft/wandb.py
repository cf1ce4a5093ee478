"""Weights & Biases tracking: one W&B run per experiment, as a side channel of the run.

What a run holds (`conf/wandb/default.yaml` configures it):
  - config: the resolved Hydra config, plus the run directory and the SLURM job id;
  - group: the scenario (`<model>/<task>`) and job type: the method, so that methods sit side
    by side; tags: model, task, method, mix ratio, seed, peft (and `wandb.tags`);
  - history: the Trainer's logs (`train/loss`, `train/learning_rate`, ...) and the in-domain
    score during training (`eval/in_domain`), all against `train/global_step`;
  - summary: base, final and delta per benchmark (`<benchmark>/base`, ...), the means
    (`in_domain_final`, `general_delta`, ...), the mix sizes and timings;
  - a table `auxiliary_sample` of the dialogues the run mixed in (its self-dialogues for sasft).

A restarted run (a requeued SLURM job, a relaunched sweep) continues the same W&B run: its id
is kept in the run directory until results.json exists. With no API key or no network, `online`
becomes `offline` (said once per process); `wandb sync` uploads such runs later. Any W&B error
is logged once and turns tracking off for the rest of the run: it never fails or stops training.
wandb is imported only when tracking is on.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig
from transformers import TrainerCallback

from . import record
from .cache import publish
from .config import resolved

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
# The Trainer's end-of-training totals are one number each: summary, not a curve.
_TOTALS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
           "total_flos")
_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
          "disabled": "disabled"}
_said_offline = False  # the offline fallback is announced once per process, not once per job


def _api_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:  # where `wandb login` stores the key
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    # A short probe instead of letting wandb.init wait up to its own 90 s init timeout.
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_mode(requested: str) -> tuple[str, str | None]:
    """The mode to run in, and why it is not the requested one (None if it is)."""
    mode = _MODES.get(str(requested).lower())
    if mode is None:
        raise ValueError(f"wandb.mode must be online, offline or disabled, got {requested!r}")
    if mode != "online":
        return mode, None
    host = _api_host()
    if not _has_api_key(host):
        return "offline", "no API key (run `wandb login` or set WANDB_API_KEY)"
    if not _reachable(host):
        return "offline", f"{host} is unreachable"
    return "online", None


def _run_id(run_dir: Path) -> tuple[str, bool]:
    """This run's W&B id and whether it continues an earlier attempt. The id lives in the run
    directory, so a restarted job finds it; a finished run redone with rerun=true gets a new one."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and record.read_results(run_dir) is None:
        return path.read_text().strip(), True
    run_id = secrets.token_hex(6)  # W&B ids: lowercase letters and digits
    publish(path, run_id)
    return run_id, False


def identity(cfg: DictConfig) -> dict:
    who = {"model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name,
           "mix_ratio": cfg.method.get("mix_ratio"), "seed": cfg.seed,
           "peft": cfg.peft.name}  # full fine-tuning or LoRA: filter on it, never mix them
    return who


class Tracker:
    """One W&B run, or nothing (`run` is None). Every method swallows W&B errors: the first one
    is logged and turns tracking off; the experiment never sees it."""

    def __init__(self, run=None):
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    def _failed(self, what: str, error: BaseException) -> None:
        log.warning("W&B: %s failed (%s: %s); tracking is off for the rest of this run",
                    what, type(error).__name__, error)
        run, self.run = self.run, None
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001  (already broken: nothing more to do)
            pass

    def log(self, metrics: dict) -> None:
        if self.run is not None:
            try:
                self.run.log(metrics)
            except Exception as e:  # noqa: BLE001
                self._failed("log", e)

    def summarize(self, values: dict) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(values)
            except Exception as e:  # noqa: BLE001
                self._failed("summary update", e)

    def callbacks(self) -> list[TrainerCallback]:
        return [WandbLogCallback(self)] if self.active else []

    def log_results(self, results: dict, run_dir: Path) -> None:
        """Scores, deltas, mix sizes and timings into the summary; the sample dialogues as a table."""
        if self.run is None:
            return
        values = dict(results["summary"])
        for name, s in results["scores"].items():
            values |= {f"{name}/base": s["base"], f"{name}/final": s["final"],
                       f"{name}/delta": s["delta"]}
        mix = results["mix"]
        values |= {"mix/task": mix["task"], "mix/auxiliary": mix["auxiliary"]}
        values |= {f"time/{stage}": t for stage, t in results["timings"].items()}
        self.summarize(values)
        sample = Path(run_dir) / "auxiliary_sample.jsonl"
        if self.run is None or not sample.is_file():
            return
        try:
            # Empty for task_only and freeze: nothing was mixed in, so no table.
            rows = [json.loads(line) for line in sample.read_text().splitlines() if line.strip()]
            if rows:
                self.run.log({"auxiliary_sample": dialogue_table(rows, results["run"]["method"])})
        except Exception as e:  # noqa: BLE001
            self._failed("sample table", e)

    def finish(self, error: BaseException | None = None) -> None:
        """Close the run. An interruption (Ctrl-C, SIGTERM, submitit's requeue) marks it
        preempted, since the next attempt continues it; any other error marks it failed."""
        if self.run is None:
            return
        run, self.run = self.run, None
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        try:
            if interrupted:
                run.mark_preempting()
            run.finish(exit_code=0 if error is None else 1)
        except Exception as e:  # noqa: BLE001
            # Expected when SLURM stops a job: its SIGTERM reaches wandb's own process too.
            log.log(logging.INFO if interrupted else logging.WARNING,
                    "W&B: could not close the run (%s: %s)%s", type(e).__name__, e,
                    "; the next attempt continues it" if interrupted else "")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exc)
        return False  # the experiment's own error, if any, goes on


def dialogue_table(rows: list[dict], source: str):
    import wandb

    table = wandb.Table(columns=["index", "source", "turns", "first_user", "first_assistant",
                                 "dialogue"])
    for i, row in enumerate(rows):
        messages = row["messages"]
        first = lambda role: next((m["content"] for m in messages if m["role"] == role), "")  # noqa: E731
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        table.add_data(i, source, sum(m["role"] == "user" for m in messages), first("user"),
                       first("assistant"), text)
    return table


class WandbLogCallback(TrainerCallback):
    """The Trainer's logs into the tracker: `loss` -> `train/loss`, `eval_in_domain` ->
    `eval/in_domain`, each with `train/global_step` as its x axis."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0:
            # Resumed from a checkpoint: say where, so the curve's restart is explained.
            self.tracker.summarize({"train/resumed_from_step": state.global_step})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        metrics, totals = {}, {}
        for key, value in (logs or {}).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key in _TOTALS:
                totals[f"train/{key}"] = value
            elif key.startswith("eval_"):
                metrics[f"eval/{key.removeprefix('eval_')}"] = value
            else:
                metrics[f"train/{key}"] = value
        if metrics:
            self.tracker.log({**metrics, "train/global_step": state.global_step})
        if totals:
            self.tracker.summarize(totals)


def start(cfg: DictConfig, run_dir: str | Path) -> Tracker:
    """The W&B run for this experiment (an inactive Tracker if W&B is off or cannot start)."""
    wcfg = cfg.wandb
    if not wcfg.enabled:
        return Tracker()
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun / accelerate: one W&B run, from rank 0
        return Tracker()
    global _said_offline
    run_dir = Path(run_dir)
    try:
        mode, why = choose_mode(wcfg.mode)
        if mode == "disabled":
            return Tracker()
        import wandb

        who = identity(cfg)
        run_id, resuming = _run_id(run_dir)
        root = Path(wcfg.dir or os.environ.get("WANDB_DIR") or run_dir)
        root.mkdir(parents=True, exist_ok=True)
        if why and not _said_offline:
            log.warning("W&B: %s; runs are logged offline, this one under %s/wandb. Upload "
                        "them later with `wandb sync <dir>/wandb/offline-run-*`", why, root)
            _said_offline = True
        config = {**resolved(cfg), "run_dir": str(run_dir.resolve()),
                  "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        kwargs = dict(
            project=wcfg.project, entity=wcfg.entity, mode=mode, dir=str(root),
            id=run_id, resume="allow",
            group=f"{who['model']}/{who['task']}", job_type=who["method"],
            name=" ".join([who["method"], *([f"r{who['mix_ratio']}"] if who["mix_ratio"] is not None
                                            else []), f"s{who['seed']}"]),
            tags=[f"{k}:{v}" for k, v in who.items() if v is not None] + list(wcfg.tags),
            config=config,
            # No console capture: wandb would wrap every stdout/stderr write in a handler that
            # swallows exceptions, including one that submitit's signal handler raises there.
            # The job's own log (SLURM's, the terminal) keeps the console output.
            settings=wandb.Settings(init_timeout=60, console="off"),
        )
        try:
            run = wandb.init(**kwargs)
        except Exception as e:  # noqa: BLE001  (online refused: keep the record offline)
            if mode != "online":
                raise
            log.warning("W&B: online start failed (%s); logging offline under %s/wandb", e, root)
            run = wandb.init(**kwargs | {"mode": "offline"})
        run.define_metric("train/global_step")
        run.define_metric("*", step_metric="train/global_step", step_sync=True)
        if resuming:
            log.info("W&B: continuing run %s of an earlier attempt", run_id)
        return Tracker(run)
    except Exception as e:  # noqa: BLE001  (import, settings, service start: never fatal)
        log.warning("W&B: could not start a run (%s: %s); this run is not tracked",
                    type(e).__name__, e)
        return Tracker()
