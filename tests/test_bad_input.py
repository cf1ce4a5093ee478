"""Bad input fails before any model is loaded or trained, with a message that names it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import open_dict

from sasft import config, pipeline
from sasft.config import ConfigError
from sasft.data import DataError
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def nothing_expensive(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("bad input reached model loading")

    monkeypatch.setattr(pipeline, "load_model", forbidden)


@pytest.mark.parametrize("group, allowed", [
    ("model", "tiny"), ("task", "parity, vowels"), ("method", "ext_mix, freeze, sasft, task_only")])
def test_unknown_group_choice_lists_allowed_values(group, allowed):
    with pytest.raises(MissingConfigException) as err:
        compose_config([f"{group}=nope"])
    message = str(err.value)
    assert f"Could not find '{group}/nope'" in message
    for option in allowed.split(", "):
        assert option in message


def test_unknown_method_on_the_command_line():
    proc = subprocess.run([sys.executable, "run.py", "method=nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'method/nope'" in proc.stderr
    assert "sasft" in proc.stderr and "task_only" in proc.stderr


@pytest.mark.parametrize("value, needle", [("-0.5", "mix_ratio must be >= 0"),
                                           ("lots", "mix_ratio must be a finite number"),
                                           ("nan", "mix_ratio must be a finite number")])
def test_bad_mix_ratio(make_cfg, tmp_path, value, needle):
    with pytest.raises(ConfigError, match=needle):
        pipeline.run_experiment(make_cfg(f"mix_ratio={value}"), tmp_path)


def test_liger_kernel_without_a_gpu_or_the_package(make_cfg, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.use_liger_kernel=true needs a CUDA GPU and "
                                          r"liger-kernel \(pip install -e '.\[liger\]'\)"):
        pipeline.run_experiment(make_cfg("train.use_liger_kernel=true"), tmp_path)


@pytest.mark.parametrize("override", ["method.trainable_layers=5",
                                      "method.trainable_layers=null method.frozen_layers=9"])
def test_freezing_more_layers_than_the_model_has(make_cfg, tmp_path, override):
    cfg = make_cfg("method=freeze", *override.split())
    with pytest.raises(ConfigError, match="has only 4 layers"):
        pipeline.run_experiment(cfg, tmp_path)


def _task_file(make_cfg, tmp_path, text: str | None):
    path = tmp_path / "task.jsonl"
    if text is not None:
        path.write_text(text)
    cfg = make_cfg("method=task_only")
    with open_dict(cfg):
        cfg.task.train_file = str(path)
    return cfg, path


def test_missing_task_file(make_cfg, tmp_path):
    cfg, path = _task_file(make_cfg, tmp_path, None)
    with pytest.raises(DataError, match=f"data file not found: {path}"):
        pipeline.run_experiment(cfg, tmp_path)


def test_empty_task_file(make_cfg, tmp_path):
    cfg, path = _task_file(make_cfg, tmp_path, "\n")
    with pytest.raises(DataError, match=f"data file is empty: {path}"):
        pipeline.run_experiment(cfg, tmp_path)


@pytest.mark.parametrize("bad_line, needle", [
    ('{"prompt": "a", "response": ', "malformed JSON"),
    ('{"prompt": "a"}', "needs a non-empty string 'response'"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r"messages\[0\] needs a 'role'"),
])
def test_malformed_line_names_file_and_line(make_cfg, tmp_path, bad_line, needle):
    good = '{"prompt": "Is 7 odd or even?", "response": "odd"}\n'
    cfg, path = _task_file(make_cfg, tmp_path, good + good + bad_line + "\n")
    with pytest.raises(DataError, match=f"{path}:3: {needle}"):
        pipeline.run_experiment(cfg, tmp_path)


def test_model_path_that_does_not_exist(make_cfg, tmp_path):
    cfg = make_cfg()
    with open_dict(cfg):
        del cfg.model["toy"]  # a user's local checkpoint, not a toy to build
        cfg.model.path = str(tmp_path / "no_such_model")
    with pytest.raises(ConfigError, match="model.path does not exist: .*no_such_model"):
        pipeline.run_experiment(cfg, tmp_path)


def test_external_corpus_problems_are_caught_early(make_cfg, tmp_path):
    cfg = make_cfg("method=ext_mix")
    with open_dict(cfg):
        cfg.method.corpus_file = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="data file not found"):
        pipeline.run_experiment(cfg, tmp_path)
