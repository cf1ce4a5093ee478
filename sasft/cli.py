"""The `run.py` entry: one experiment in its Hydra output directory, reported on the console
and tracked in W&B.

Kept apart from the pipeline so that the pipeline stays a plain function of a config. The run's
directory is named by its identity (sasft/rundir.py): a finished run of the same config is
reported, not redone; a directory made for another config is refused; a second launch of a run
that is under way waits for it. Under SLURM a requeued job resumes from its last checkpoint.
A user's mistake (a SasftError) is printed as one line; a bug keeps its traceback."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import config, record  # noqa: F401  (config: the resolvers that check and name a run)
from .errors import SasftError, refuse
from .paths import CONF_MODULE
from .rundir import check_identity, identity, owned, remove_unclaimed, remove_unstarted_sweep

log = logging.getLogger("sasft")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run unwinds without recording results."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"received signal {signum}")


def check_cluster_settings(cfg: DictConfig) -> None:
    """Warn, in the job's log, about settings that make a SLURM job lose or redo work."""
    if "SLURM_JOB_ID" not in os.environ:
        return
    if not cfg.train.save_steps:
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


def claim(run_dir: Path, cfg: DictConfig, stack: ExitStack) -> dict | None:
    """Make `run_dir` this run's and hold it (until `stack` closes); returns the recorded
    results of a finished run to report, or None to run."""
    check_identity(run_dir, identity(cfg))
    stack.enter_context(owned(run_dir, cfg.owner_wait_s))
    done = record.read_results(run_dir)
    if done is not None and cfg.rerun:
        # Redo from scratch: the finished run's checkpoints would only "resume" its last step.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return None
    return done


def run(cfg: DictConfig, run_dir: Path) -> float | None:
    # The training stack (torch, transformers) is imported only by a command that passed the
    # checks (`config`): a refused one answers in seconds.
    from . import dist, wandb
    from .pipeline import check_inputs, run_experiment
    from .train import last_checkpoint

    dist.init()
    try:  # before the directory is claimed and W&B starts: a refused run leaves neither
        inputs = check_inputs(cfg)
    except SasftError:
        if dist.is_main():
            remove_unclaimed(run_dir)
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                remove_unstarted_sweep(Path(HydraConfig.get().sweep.dir))
        raise
    with ExitStack() as stack:
        done = dist.on_main(claim, run_dir, cfg, stack)
        if done is not None:
            if dist.is_main():
                log.info("already complete, not rerun (pass rerun=true to redo): %s", run_dir)
                print(record.format_table(done["scores"]))
            return done["summary"].get("general_final")
        # A plain `kill` (or SLURM's SIGTERM at a time limit) unwinds like Ctrl-C: no results
        # file. Under submitit the launcher owns the signals, so leave its handlers alone.
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_interrupted)
        if dist.is_main():
            check_cluster_settings(cfg)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        resume_from = last_checkpoint(run_dir)
        if resume_from:
            log.info("resuming training from %s (an earlier attempt of this run stopped there)",
                     resume_from)
        with wandb.start(cfg, run_dir) as tracker:
            results = run_experiment(cfg, run_dir, callbacks=tracker.callbacks(), inputs=inputs)
            tracker.log_results(results, run_dir)
    if dist.is_main():
        r, mix = results["run"], results["mix"]
        ratio = f"mix_ratio={r['mix_ratio']}, " if r["mixes_data"] else ""
        print(f"\n{r['method']} on {r['task']} ({r['model']}, {ratio}seed={r['seed']}): "
              f"{mix['task']} task + {mix['auxiliary']} auxiliary dialogues, "
              f"{results['timings']['total']:.0f} s")
        print(record.format_table(results["scores"]))
        print(f"results: {run_dir / record.RESULTS_FILE}")
    return results["summary"].get("general_final")


def main(cfg: DictConfig) -> float | None:
    """The Hydra task: one run in the directory Hydra made for it."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except SasftError as e:
        refuse(e)


def entry() -> None:
    """`sasft-train` and `python run.py`: Hydra's command line over the packaged configs."""
    import hydra

    hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name="config",
               version_base="1.3")(main)()
