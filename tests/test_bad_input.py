"""Bad input fails before any model is loaded or trained, with a message that names it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import open_dict

from sasft import config, pipeline
from sasft.errors import ConfigError
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


@pytest.mark.parametrize("override, needle", [
    ("mix_ratio=-0.5", "mix_ratio must be a finite number in [0.0, 1000.0], got -0.5"),
    ("mix_ratio=nan", "mix_ratio must be a finite number in [0.0, 1000.0], got nan"),
    ("train.epochs=0", "train.epochs must be an integer in [1, 2147483647], got 0"),
    ("train.learning_rate=0", "train.learning_rate must be a finite number in (0.0, 1.0], got 0.0"),
    ("train.warmup_ratio=2", "train.warmup_ratio must be a finite number in [0.0, 1.0], got 2.0"),
    ("train.max_seq_len=0", "train.max_seq_len must be an integer in [8, 2147483647], got 0"),
    ("train.lr_scheduler_type=bogus", "train.lr_scheduler_type must be one of linear, cosine"),
    ("train.save_steps=0", "train.save_steps must be an integer in [1, 2147483647], got 0"),
    ("generation.temperature=-1", "generation.temperature must be a finite number in [0.0, 100.0], got -1.0"),
    ("generation.top_p=1.5", "generation.top_p must be a finite number in (0.0, 1.0], got 1.5"),
    ("generation.num_turns=0", "generation.num_turns must be an integer in [1, 2147483647], got 0"),
    ("generation.oversample=0.5", "generation.oversample must be a finite number in [1.0, 1000.0], got 0.5"),
    ("generation.backend=tpu", "generation.backend must be one of hf, vllm, got 'tpu'"),
    ("eval.limit=0", "eval.limit must be an integer in [1, 2147483647], got 0"),
    ("+eval.general.legs.num_fewshot=-1", "eval.general.legs.num_fewshot must be an integer in [0, 2147483647], got -1"),
    ("eval.general.legs.answer_regex='a(b'", "eval.general.legs.answer_regex must be a valid regular"),
    ("model.dtype=float8", "model.dtype must be one of float32, bfloat16, float16, got 'float8'"),
    ("method=freeze method.frozen_fraction=1.5 method.trainable_layers=null",
     "method.frozen_fraction must be a finite number in [0.0, 1.0], got 1.5"),
    ("peft=lora peft.r=0", "peft.r must be an integer in [1, 2147483647], got 0"),
    ("wandb.mode=sometimes", "wandb.mode must be one of online, offline, disabled"),
    ("owner_wait_s=-1", "owner_wait_s must be a finite number in [0.0, 1000000000.0], got -1.0"),
])
def test_an_impossible_value_fails_naming_the_field(tmp_path, override, needle):
    cfg = compose_config(override.split() + [f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(needle)):
        pipeline.run_experiment(cfg, tmp_path)


@pytest.mark.parametrize("override, needle", [
    ("train.learning_rate=abc", "train.learning_rate"),
    ("mix_ratio=lots", "mix_ratio"),
    ("seed=1.5", "seed"),
    ("train.epochs=two", "train.epochs"),
    ("train.epoch=2", "train.epoch"),  # a misspelt key
])
def test_a_wrong_type_or_unknown_key_fails_at_composition(override, needle):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override])
    assert needle in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, needle", [
    ("train.learning_rate=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("train.epochs=0", "error: train.epochs must be an integer in [1, 2147483647], got 0"),
])
def test_the_command_line_says_it_in_a_few_lines_without_traceback(override, needle):
    proc = subprocess.run([sys.executable, "run.py", override], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 8, proc.stderr


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
        cfg.model.builder = None  # a user's local checkpoint, not a toy to build
        cfg.model.path = str(tmp_path / "no_such_model")
    with pytest.raises(ConfigError, match="model.path does not exist: .*no_such_model"):
        pipeline.run_experiment(cfg, tmp_path)


def test_external_corpus_problems_are_caught_early(make_cfg, tmp_path):
    cfg = make_cfg("method=ext_mix")
    with open_dict(cfg):
        cfg.method.corpus_file = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="data file not found"):
        pipeline.run_experiment(cfg, tmp_path)


def test_a_benchmark_added_on_the_command_line_is_checked_like_the_others(tmp_path):
    ok = compose_config(["model=llama", "+eval.general.hellaswag={lm_eval_task: hellaswag, "
                         "num_fewshot: 10, metric: acc_norm}"])
    assert ok.eval.general.hellaswag.num_fewshot == 10
    bad = compose_config(["+eval.general.extra={file: x.jsonl, max_gen_tok: 3}",
                          f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="eval.general.extra.max_gen_tok: Key 'max_gen_tok' not"):
        pipeline.run_experiment(bad, tmp_path)


@pytest.fixture
def nltk_path(tmp_path, monkeypatch):
    """NLTK's search path: one empty directory (the compute node without punkt_tab)."""
    import nltk

    root = tmp_path / "nltk_data"
    root.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    return root


def test_ifeval_without_nltk_data_is_refused_before_anything_loads(nltk_path, tmp_path):
    from sasft.evaluate import missing_nltk_data, needs_nltk_data

    fix = missing_nltk_data()
    assert fix and "\n" not in fix and "python -m nltk.downloader punkt_tab" in fix
    cfg = compose_config(["model=llama1b", "task=gsm8k", f"cache_dir={tmp_path}"])
    assert needs_nltk_data(cfg.eval.general)
    assert not needs_nltk_data(compose_config(["eval=smol"]).eval.general)  # its own subset
    with pytest.raises(config.SasftError, match="punkt_tab") as err:
        pipeline.run_experiment(cfg, tmp_path / "run")
    assert str(err.value) == fix
    (nltk_path / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    assert missing_nltk_data() is None
