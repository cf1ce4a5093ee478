"""The `run.py` entry: one experiment in its Hydra output directory, reported on the console.

Kept apart from the pipeline so that the pipeline stays a plain function of a config."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import record
from .pipeline import run_experiment

log = logging.getLogger("sasft")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run unwinds without recording results."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"received signal {signum}")


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def main(cfg: DictConfig) -> float | None:
    run_dir = run_dir_of(cfg)
    done = record.read_results(run_dir)
    if done is not None and not cfg.rerun:
        log.info("already complete, not rerun (pass rerun=true to redo): %s", run_dir)
        print(record.format_table(done["scores"]))
        return done["summary"].get("general_final")
    # A plain `kill` (or SLURM's SIGTERM at a time limit) unwinds like Ctrl-C: no results file.
    # Under submitit the launcher owns the signals, so leave its handlers alone.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_interrupted)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    results = run_experiment(cfg, run_dir)
    run = results["run"]
    print(f"\n{run['method']} on {run['task']} ({run['model']}, mix_ratio={run['mix_ratio']}, "
          f"seed={run['seed']}): {results['mix']['task']} task + "
          f"{results['mix']['auxiliary']} auxiliary dialogues, "
          f"{results['timings']['total']:.0f} s")
    print(record.format_table(results["scores"]))
    print(f"results: {run_dir / record.RESULTS_FILE}")
    return results["summary"].get("general_final")
