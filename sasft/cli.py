"""The `run.py` entry: one experiment in its Hydra output directory, reported on the console
and tracked in W&B.

Kept apart from the pipeline so that the pipeline stays a plain function of a config. The same
entry runs under a SLURM sweep (conf/hydra/launcher/slurm.yaml): a finished run is skipped, and
a requeued or relaunched one resumes from its last training checkpoint in the same directory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import record, tracking
from .pipeline import run_experiment
from .train import last_checkpoint

log = logging.getLogger("sasft")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run unwinds without recording results."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"received signal {signum}")


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_cluster_settings(cfg: DictConfig) -> None:
    """Warn, in the job's log, about settings that make a SLURM job lose or redo work."""
    if "SLURM_JOB_ID" not in os.environ:
        return
    if not cfg.train.get("save_steps"):
        log.warning("train.save_steps is null: no training checkpoints, so a preempted or "
                    "timed-out job retrains from step 0; add train.save_steps=N to the sweep")
    cache = Path(cfg.cache_dir).resolve()
    local = [Path(p).resolve() for p in ("/tmp", "/var/tmp", "/dev/shm",
                                         os.environ.get("TMPDIR"), os.environ.get("SLURM_TMPDIR"))
             if p]
    if any(cache == d or d in cache.parents for d in local):
        log.warning("cache_dir %s looks node-local: jobs on other nodes cannot share its base "
                    "scores and self-dialogues and will redo them; point SASFT_CACHE (or "
                    "cache_dir) at shared storage", cache)


def main(cfg: DictConfig) -> float | None:
    run_dir = run_dir_of(cfg)
    done = record.read_results(run_dir)
    if done is not None and not cfg.rerun:
        log.info("already complete, not rerun (pass rerun=true to redo): %s", run_dir)
        print(record.format_table(done["scores"]))
        return done["summary"].get("general_final")
    if done is not None:
        # Redo from scratch: the finished run's checkpoints would only "resume" its last step.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    # A plain `kill` (or SLURM's SIGTERM at a time limit) unwinds like Ctrl-C: no results file.
    # Under submitit the launcher owns the signals, so leave its handlers alone.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_interrupted)
    check_cluster_settings(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    resume_from = last_checkpoint(run_dir)
    if resume_from:
        log.info("resuming training from %s (an earlier attempt of this run stopped there)",
                 resume_from)
    with tracking.start(cfg, run_dir) as tracker:
        results = run_experiment(cfg, run_dir, callbacks=tracker.callbacks())
        tracker.log_results(results, run_dir)
    run = results["run"]
    print(f"\n{run['method']} on {run['task']} ({run['model']}, mix_ratio={run['mix_ratio']}, "
          f"seed={run['seed']}): {results['mix']['task']} task + "
          f"{results['mix']['auxiliary']} auxiliary dialogues, "
          f"{results['timings']['total']:.0f} s")
    print(record.format_table(results["scores"]))
    print(f"results: {run_dir / record.RESULTS_FILE}")
    return results["summary"].get("general_final")
