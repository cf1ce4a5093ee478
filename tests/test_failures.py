"""A run that fails or is interrupted leaves no results.json behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sasft import train
from sasft.pipeline import run_experiment
from sasft.record import RESULTS_FILE
from sasft.train import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]


def test_non_finite_loss_stops_the_run_without_results(make_cfg, tmp_path, monkeypatch):
    original = train.SFTTrainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        return loss * torch.tensor(float("nan")) if self.state.global_step >= 1 else loss

    monkeypatch.setattr(train.SFTTrainer, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at step 2"):
        run_experiment(make_cfg("method=task_only"), tmp_path)
    assert not (tmp_path / RESULTS_FILE).exists()


@pytest.mark.slow
def test_sigterm_during_training_leaves_no_results(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "run.py", "method=task_only", f"cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}", "train.epochs=50", "train.eval_every_steps=0",
           "eval.limit=8", "train.save_model=false", "train.logging_steps=1",
           "wandb.enabled=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until the Trainer reports a step: training is under way
        seen.append(line)
        if "'loss'" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode != 0, output
    assert "'loss'" in "".join(seen), output
    assert not (run_dir / RESULTS_FILE).exists()
    assert (run_dir / "config.yaml").exists()  # it did start, in the right directory
