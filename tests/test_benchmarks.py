"""The benchmark scripts still run and print their figures (downsized; no timing is asserted:
the figures themselves are measured by hand, see docs/performance.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_benchmark(script: str, *args: str, cache: Path) -> str:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SASFT_CACHE": str(cache), "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_generation_benchmark_prints_the_ratio(tmp_path):
    out = run_benchmark("generate.py", "--batched", "8", "--serial", "2", "--repeats", "2",
                        "generation.batch_size=4", cache=tmp_path)
    assert re.search(r"batch_size +4: +8 dialogues", out)
    assert re.search(r"batch_size +1: +2 dialogues", out)
    assert re.search(r"batched / one at a time: [\d.]+x \(repeat by repeat: [\d.]+x, [\d.]+x\)", out)


def test_training_benchmark_packed_and_random_batches_agree(tmp_path):
    out = run_benchmark("train.py", "--steps", "2", "--warmup", "1", "task.max_train_examples=40",
                        cache=tmp_path)
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("random", "grouped", "packed")}
    assert set(rows) == {"random", "grouped", "packed"}
    assert float(rows["packed"][1]) == 1.0  # the non-padding share
    # Random and packed batches hold the same examples: the same mean loss.
    assert float(rows["packed"][-1]) == pytest.approx(float(rows["random"][-1]), abs=1e-3)
    assert "matmul peak" in out


def test_gpu_benchmark_smoke_runs_on_a_cpu(tmp_path):
    out = run_benchmark("gpu.py", "--layers", "1", "--vocab", "512", "--steps", "1", "--warmup",
                        "1", "--batch-size", "2", "--seq-len", "32", "--new-tokens", "4",
                        "--serial", "1", cache=tmp_path)
    assert re.search(r"^off +\d+ .*%", out, re.M) and re.search(r"^on +\d+ .*%", out, re.M)
    assert re.search(r"hf, batched +batch +64: +\d+ tokens", out)
    assert re.search(r"hf batched / hf one at a time: [\d.]+x", out)
