"""Weights & Biases: one W&B run per experiment, as a side channel of the run.

What is the experiment's is done here: the run's group (the scenario, `<model>/<task>`) and job
type (the method), its tags, its id kept in the run directory so that a requeued job continues
it, the results in the summary, the mixed-in dialogues as a Table, and saying once that runs are
logged offline. The Trainer's curves (`train/loss`, `eval/in_domain` against
`train/global_step`) are transformers' WandbCallback's; logging in, offline mode and syncing are
wandb's. A W&B error is logged once and turns tracking off: it never fails or stops training.
wandb is imported only when tracking is on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from omegaconf import DictConfig
from transformers import TrainerCallback
from transformers.integrations import WandbCallback

from . import dist, record
from .cache import publish
from .config import resolved
from .rundir import short_identity

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
# How long wandb may try to reach its server before the run is logged offline instead. On nodes
# without internet, set WANDB_MODE=offline (wandb's own switch) to skip the wait.
INIT_TIMEOUT_S = 30
_said_offline = False  # the offline notice is given once per process, not once per job


def _run_id(run_dir: Path) -> tuple[str, bool]:
    """This run's W&B id and whether it continues an earlier attempt. The id lives in the run
    directory, so a restarted job finds it; a finished run redone with rerun=true gets a new one."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and record.read_results(run_dir) is None:
        return path.read_text().strip(), True
    run_id = secrets.token_hex(6)  # W&B ids: lowercase letters and digits
    publish(path, run_id)
    return run_id, False


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
        return [TrainerLogs(self)] if self.active else []

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


class TrainerLogs(WandbCallback):
    """transformers' W&B callback, writing into the tracker's run; an error in it turns tracking
    off instead of failing the run."""

    def __init__(self, tracker: Tracker):
        super().__init__()
        self.tracker = tracker

    def _guarded(self, hook, *args, **kwargs) -> None:
        if self.tracker.active:
            try:
                hook(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                self.tracker._failed(f"the Trainer's {hook.__name__}", e)

    def on_train_begin(self, args, state, control, **kwargs):
        self._guarded(super().on_train_begin, args, state, control, **kwargs)
        if state.is_world_process_zero and state.global_step > 0:
            # Resumed from a checkpoint: say where, so the curve's restart is explained.
            self.tracker.summarize({"train/resumed_from_step": state.global_step})

    def on_log(self, args, state, control, **kwargs):
        self._guarded(super().on_log, args, state, control, **kwargs)

    def on_save(self, args, state, control, **kwargs):
        self._guarded(super().on_save, args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self._guarded(super().on_train_end, args, state, control, **kwargs)


def start(cfg: DictConfig, run_dir: str | Path) -> Tracker:
    """The W&B run for this experiment (an inactive Tracker if W&B is off or cannot start)."""
    wcfg = cfg.wandb
    if not wcfg.enabled:
        return Tracker()
    if not dist.is_main():  # torchrun / accelerate: one W&B run, from rank 0
        return Tracker()
    global _said_offline
    run_dir = Path(run_dir)
    try:
        import wandb

        mode = wcfg.mode
        if mode == "disabled":
            return Tracker()
        # wandb's own credentials (WANDB_API_KEY, `wandb login`): without them, offline.
        why = None
        if mode == "online" and not wandb.login(prompt=False, verify=False):
            mode, why = "offline", "no API key (run `wandb login` or set WANDB_API_KEY)"
        who = short_identity(cfg)
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
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off"),
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
