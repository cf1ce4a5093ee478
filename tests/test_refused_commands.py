"""A wrong value on the real command line is refused in one `error:` line naming the field, and
the refused command leaves nothing behind: no run directory, no W&B run, no cache entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from sasft.config import validate
from sasft.data import read_jsonl
from sasft.errors import ConfigError
from sasft.pipeline import benchmarks_of
from sasft.task import load_task
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "sasft" / "toy" / "data" / "tasks" / "parity"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def task_yaml(tmp_path: Path, body: str) -> str:
    """A task YAML `mine` in a config folder of the user's own; the override that finds it."""
    folder = tmp_path / "my_conf" / "task"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text("defaults:\n  - /schema/task@_here_\n  - _self_\n"
                                      "name: mine\n" + body)
    return f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"


# A test file in sasft's prompt/response schema, without the "answer" a target may name.
PROMPT_RESPONSE = [{"prompt": "Is 3 odd or even?", "response": "odd"}] * 4

# (overrides, what the error line must say). Task YAMLs are written by `task_yaml`: {train} and
# {test} stand for a local file in the prompt/response schema.
CASES = {
    "seed_negative": ("seed=-1", "seed must be an integer in [0, 2147483647], got -1"),
    "seed_too_large": ("seed=4294967296", "seed must be an integer in [0, 2147483647]"),
    "mix_ratio_overflow": ("mix_ratio=1e308",
                           "mix_ratio must be a finite number in [0.0, 1000.0], got 1e+308"),
    "mix_ratio_nan": ("mix_ratio=nan", "mix_ratio must be a finite number in [0.0, 1000.0], got nan"),
    "mix_ratio_inf": ("method=ext_mix mix_ratio=inf", "mix_ratio must be a finite number"),
    "learning_rate_nan": ("train.learning_rate=nan",
                          "train.learning_rate must be a finite number in (0.0, 1.0], got nan"),
    "strength_overflow": ("method=l2_base method.strength=1e308",
                          "method.strength must be a finite number in [0.0, 1000000.0]"),
    "temperature_inf": ("generation.temperature=inf", "generation.temperature must be a finite"),
    "epochs_beyond_int": ("train.epochs=99999999999",
                          "train.epochs must be an integer in [1, 2147483647], got 99999999999"),
    "eval_seed_negative": ("eval.seed=-5", "eval.seed must be an integer in [0, 4294967295]"),
    "oversample_overflow": ("generation.oversample=1e308", "generation.oversample must be a finite"),
    # Checked against the model's shape, after Hydra made the directory, which is then removed.
    "frozen_layers_beyond_the_model": ("method=freeze method.trainable_layers=5",
                                       "has only 4 layers"),
    "target_the_file_lacks": (
        "task=mine",
        "{test}:1: no field 'answer' (what task.benchmark.target scores against)"),
    "key_the_form_ignores": ("task=mine", "task.benchmark.file is set, but task mine ignores it"),
    # A sweep (-m): a value its jobs share is refused before Hydra writes the sweep's directory.
    "sweep_with_a_shared_wrong_value": ("-m method=task_only,sasft seed=-1",
                                        "seed must be an integer in [0, 2147483647], got -1"),
    # ... a swept one by its first job, which removes Hydra's record of the unstarted sweep
    "sweep_with_a_swept_wrong_value": ("-m method=task_only seed=-1,0",
                                       "seed must be an integer in [0, 2147483647], got -1"),
    "sweep_refused_on_the_model_shape": ("-m method=freeze method.trainable_layers=5 seed=0,1",
                                         "has only 4 layers"),
}
YAMLS = {
    "target_the_file_lacks": "train_file: {train}\nbenchmark:\n  file: {test}\n  target: answer\n",
    "key_the_form_ignores": ("train_file: {train}\ntest_file: {test}\nanswer_pattern: '(odd|even)'\n"
                             "benchmark:\n  file: {test}\n  target: answer\n"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_value_is_refused_in_one_line_leaving_nothing(tmp_path, case):
    overrides, needle = CASES[case]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", PROMPT_RESPONSE),
             "test": write_jsonl(tmp_path / "test.jsonl", PROMPT_RESPONSE)}
    args = overrides.split()
    if case in YAMLS:
        args.append(task_yaml(tmp_path, YAMLS[case].format(**files)))
        needle = needle.format(**files)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "SASFT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path / "wandb"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {errors[0][7:]}"] and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # No run directory (Hydra's outputs/ or multirun/), W&B run or cache entry.
    assert sorted(p.name for p in work.iterdir()) == []
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "cache").exists()


# --- the form of a task follows from its keys ---------------------------------------------------


def test_local_train_and_test_files_with_an_answer_pattern_need_no_template(tmp_path):
    """A task written from the README with local files and `answer_pattern`, no templates:
    mapped (its test prepared with the answer), the records' prompt and response as they are."""
    records = [{"prompt": f"Is {n} odd or even?", "response": f"It is {'odd' if n % 2 else 'even'}"}
               for n in range(6)]
    cfg = compose_config(["task=parity", "task.benchmark.file=null", "task.benchmark.target=answer",
                          f"task.train_file={write_jsonl(tmp_path / 'train.jsonl', records)}",
                          f"task.test_file={write_jsonl(tmp_path / 'test.jsonl', records)}",
                          "task.answer_pattern='(odd|even)'"])
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
    validate(cfg)
    task = load_task(cfg.task, tmp_path / "cache" / "tasks")
    assert task.train[1] == [{"role": "user", "content": "Is 1 odd or even?"},
                             {"role": "assistant", "content": "It is odd"}]
    test = read_jsonl(benchmarks_of(cfg, task)[0]["parity"]["file"])
    assert test[2] == {"prompt": "Is 2 odd or even?", "response": "It is even", "answer": "even"}


@pytest.mark.parametrize("overrides, needle", [
    (["task.hub_config=main"], "task.hub_config is set, but task parity ignores it: it applies "
                               "to a hub dataset and task.hub_id is not set"),
    (["task.max_test_examples=5"], "task.max_test_examples is set, but task parity ignores it"),
    (["task.train_file=null"], "task parity has no training data: set task.train_file"),
    (["task=gsm8k", "task.answer_pattern=null"],
     "task.benchmark.target is answer, but task gsm8k has no answer"),
    (["task=medtext", "task.benchmark.target=Completion"],
     "task.benchmark.target must be one of response, answer for a mapped task"),
    (["task=medtext", "task.test_split=null"], "task.test_split is not set: which split of "
                                               "BI55/MedText task medtext tests on"),
])
def test_a_task_yaml_is_checked_as_a_whole(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_config(overrides))
