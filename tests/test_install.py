"""Installed like a library: a non-editable install ships its configs and toy world, and its
`sasft-train` command trains from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["task.max_train_examples=24", "train.epochs=1", "train.batch_size=8",
         "train.save_model=false", "eval.limit=8", "generation.batch_size=32", "mix_ratio=0.5",
         "wandb.enabled=false"]

# Run the installed console script with the installed package alone: the checkout's editable
# install (a finder on sys.meta_path, set up by a .pth file) would otherwise answer first.
BOOTSTRAP = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [{target!r}] + [p for p in sys.path if p not in ("", {repo!r})]
import sasft
assert sasft.__file__.startswith({target!r}), sasft.__file__
sys.argv = ["sasft-train", *{args!r}]
exec(compile(open({script!r}).read(), {script!r}, "exec"))
"""


@pytest.mark.slow
def test_a_non_editable_install_trains_from_another_directory(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    assert (target / "sasft" / "conf" / "config.yaml").is_file()
    assert (target / "sasft" / "conf" / "method" / "sasft.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = BOOTSTRAP.format(target=str(target), repo=str(REPO), script=str(target / "bin" /
                            "sasft-train"), args=[f"cache_dir={tmp_path / 'cache'}", *SMALL])
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results] = list((elsewhere / "outputs").rglob("results.json"))
    recorded = json.loads(results.read_text())
    assert recorded["run"]["method"] == "sasft" and recorded["mix"]["auxiliary"] == 12
    # The toy model and data came from the installed package, not the checkout.
    assert recorded["config"]["model"]["path"].startswith(str(target))
