"""Every result belongs to the config that produced it: run identity, one owner per run,
methods named by what they are, the real-model settings of the short command, and nonsense
combinations refused before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from omegaconf import open_dict

from sasft import cli, pipeline
from sasft.report import cli as report
from sasft.config import resolved
from sasft.errors import ConfigError
from sasft.record import RESULTS_FILE
from sasft.rundir import OWNER_FILE, RunMismatch, identity, run_path
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
# The shrunk toy run of tests/conftest.py, as command-line overrides.
SMALL = ["task.max_train_examples=24", "train.epochs=1", "train.batch_size=8",
         "train.logging_steps=1", "train.save_model=false", "eval.limit=8",
         "generation.batch_size=32", "mix_ratio=0.5", "wandb.enabled=false"]


def launch(tmp_path, *overrides, **popen) -> subprocess.Popen:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags go before overrides
    cmd = [sys.executable, str(REPO / "run.py"), *flags, f"cache_dir={tmp_path / 'cache'}",
           *SMALL, *(o for o in overrides if o not in flags)]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def run_cli(tmp_path, *overrides) -> str:
    proc = launch(tmp_path, *overrides)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def results_under(root: Path) -> list[Path]:
    return sorted(root.rglob(RESULTS_FILE))


# --- identity -----------------------------------------------------------------------------------


def test_every_identity_field_names_the_directory_and_nothing_else_does():
    base = run_path(compose_config([]))
    assert base.startswith("tiny/parity/sasft/full_ratio1.0_seed0-")
    for changed in ("train.learning_rate=1e-5", "train.epochs=1", "eval.limit=20",
                    "generation.temperature=0.7", "method=freeze method.trainable_layers=3",
                    "model.dtype=bfloat16", "task.max_train_examples=10", "mix_ratio=0.5"):
        assert run_path(compose_config(changed.split())) != base, changed
    for same in ("rerun=true", "cache_dir=/elsewhere", "wandb.enabled=false",
                 "train.logging_steps=3", "train.save_steps=20", "generation.batch_size=7",
                 "eval.batch_size=2", "owner_wait_s=5", "sweep_name=other"):
        assert run_path(compose_config(same.split())) == base, same
    # A method that mixes nothing has no ratio: the top-level mix_ratio does not name it.
    assert run_path(compose_config(["method=task_only", "mix_ratio=0.5"])) == \
        run_path(compose_config(["method=task_only"]))


def test_freeze_and_freeze_half_are_told_apart():
    paths = {o: run_path(compose_config(o.split())) for o in (
        "method=freeze", "method=freeze_half", "method=freeze method.trainable_layers=3")}
    assert paths["method=freeze"].startswith("tiny/parity/freeze/full_seed0-")
    assert paths["method=freeze_half"].startswith("tiny/parity/freeze_half/full_seed0-")
    assert len(set(paths.values())) == 3


@pytest.mark.slow
def test_the_same_command_reuses_its_run_and_a_changed_field_makes_a_new_one(tmp_path):
    first = run_cli(tmp_path)
    assert "already complete" not in first
    again = run_cli(tmp_path)
    assert "already complete, not rerun" in again
    changed = run_cli(tmp_path, "train.learning_rate=1e-4")
    assert "already complete" not in changed
    found = results_under(tmp_path / "outputs")
    assert len(found) == 2
    lrs = sorted(json.loads(p.read_text())["config"]["train"]["learning_rate"] for p in found)
    assert lrs == [1e-4, 1e-3]
    for p in found:  # identity.json says what the hash in the directory's name stands for
        ident = json.loads((p.parent / "identity.json").read_text())
        assert p.parent.name.endswith(ident["hash"])


def test_a_directory_of_another_config_is_refused_naming_the_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    cfg = compose_config(["train.learning_rate=1e-4", "seed=3"])
    planted = compose_config([])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RESULTS_FILE).write_text(json.dumps({"schema": 2, "config": resolved(planted)}))
    with pytest.raises(RunMismatch) as err:
        cli.run(cfg, run_dir)
    message = str(err.value)
    assert "train.learning_rate: 0.001 there, 0.0001 now" in message
    assert "seed: 0 there, 3 now" in message
    assert "eval" not in message.split("(")[1]  # only the fields that differ


def test_checkpoints_of_another_config_are_never_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    run_dir = tmp_path / "run"
    with ExitStack() as stack:
        cli.claim(run_dir, compose_config([]), stack)  # an attempt that left checkpoints
    (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(RunMismatch, match="train.epochs: 8 there, 2 now"):
        cli.run(compose_config(["train.epochs=2"]), run_dir)


# --- the short real-model command ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["llama", "qwen", "llama1b", "qwen0.5b", "qwen1.5b"])
def test_a_real_model_brings_real_model_settings_and_the_command_line_wins(model):
    cfg = compose_config([f"model={model}", "task=gsm8k", "method=sasft"])
    assert cfg.train.learning_rate == 1e-5 and cfg.train.epochs == 3
    assert cfg.train.max_seq_len == 2048
    assert set(cfg.eval.general) == {"mmlu", "ifeval", "agieval", "arc_challenge"}
    assert cfg.generation.max_new_tokens == 1024 and cfg.generation.num_turns == 1
    assert cfg.peft.name == "full"
    lora = compose_config([f"model={model}", "train=lora", "peft=lora"])
    assert lora.train.learning_rate == 2e-4 and lora.peft.name == "lora"  # the command line wins
    assert compose_config([f"model={model}", "eval=toy", "allow_world_mismatch=true"]).eval.world \
        == "toy"


def test_toy_models_keep_the_toy_settings():
    for model in ("tiny", "tiny_qwen"):
        cfg = compose_config([f"model={model}"])
        assert cfg.train.learning_rate == 1e-3 and cfg.eval.world == "toy"
        assert cfg.generation.max_new_tokens == 96


@pytest.mark.parametrize("overrides, needle", [
    (["model=llama", "eval=toy"], "model=llama is a real model, but eval.world is toy: use eval=general"),
    (["model=qwen", "train=default"], "train.world is toy: use train=full or train=lora"),
    (["model=llama", "generation=default"], "use generation=chat"),
    (["eval=general"], "model=tiny is a toy model, but eval.world is real: use eval=toy"),
    (["train=full"], "use train=default"),
    (["train.max_seq_len=16"], "train.max_seq_len=16 cuts 24 of 24 task examples"),
])
def test_nonsense_combinations_fail_before_any_model_loads(tmp_path, monkeypatch, overrides,
                                                           needle):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.cache_dir = str(tmp_path / "cache")
        cfg.task.max_train_examples = 24
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        pipeline.run_experiment(cfg, tmp_path / "run")


def test_a_user_mistake_is_one_line_without_traceback(tmp_path):
    proc = launch(tmp_path, "model=llama", "eval=toy")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "error: model=llama is a real model" in out and "Traceback" not in out


# --- one owner per run --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_launch_waits_for_the_owner_or_refuses_naming_it(tmp_path):
    long = ["train.epochs=60", "train.eval_every_steps=0"]  # tens of seconds of training
    owner = launch(tmp_path, *long)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(f"outputs/**/{OWNER_FILE}")) and time.time() < deadline:
            time.sleep(0.2)
        held = list(tmp_path.glob(f"outputs/**/{OWNER_FILE}"))
        assert held, "the first launch never took its run directory"
        impatient = launch(tmp_path, *long, "owner_wait_s=0")
        patient = launch(tmp_path, *long)
        out, _ = impatient.communicate(timeout=120)
        assert owner.poll() is None, "the owner finished before the second launch came"
        waited, _ = patient.communicate(timeout=300)
        first, _ = owner.communicate(timeout=300)
    finally:
        owner.kill()
    assert impatient.returncode == 1, out
    assert f"is held by pid {owner.pid} on " in out and "not started twice" in out
    assert owner.returncode == 0 and patient.returncode == 0, first + waited
    assert "waiting up to 600 s" in waited and "already complete, not rerun" in waited
    assert "'loss'" in first and "'loss'" not in waited  # trained once
    assert len(results_under(tmp_path / "outputs")) == 1
    assert not held[0].exists()  # released at the end


# --- the report compares like with like ---------------------------------------------------------


@pytest.mark.slow
def test_a_learning_rate_sweep_is_two_runs_and_two_variants(tmp_path):
    run_cli(tmp_path, "-m", "method=task_only", "train.learning_rate=1e-3,1e-4",
            "sweep_name=lr")
    found = results_under(tmp_path / "multirun" / "lr")
    assert len(found) == 2
    rep = report.build_report(tmp_path / "multirun" / "lr")
    assert set(rep.table[0].final) == {"task_only [train.learning_rate=0.001]",
                                       "task_only [train.learning_rate=0.0001]"}
    assert all(stat.n == 1 for stat in rep.table[0].final.values())  # never averaged together
    md = (rep.out_dir / "report.md").read_text()
    compared = md.split("Compared: ")[1].split(". ")[0]
    assert sorted(compared.split("; ")) == ["task_only [train.learning_rate=0.0001]",
                                            "task_only [train.learning_rate=0.001]"]
    narrowed = report.build_report(tmp_path / "multirun" / "lr", out_dir=tmp_path / "narrow",
                                   where=["train.learning_rate=1e-4"])
    assert list(narrowed.table[0].final) == ["task_only"]


# --- several processes --------------------------------------------------------------------------


LAUNCHERS = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
             "accelerate": [sys.executable, "-m", "accelerate.commands.launch",
                            "--num_processes", "2", "--cpu"]}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_make_one_run(tmp_path, launcher):
    """Two CPU processes (gloo) stand in for two GPUs."""
    cmd = [*LAUNCHERS[launcher], str(REPO / "run.py"), f"cache_dir={tmp_path / 'cache'}", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    found = results_under(tmp_path / "outputs")
    assert len(found) == 1, out[-4000:]
    results = json.loads(found[0].read_text())
    assert results["mix"]["auxiliary"] == 12 and results["scores"]["parity"]["final"] >= 0
    # The mix's 12 self-dialogues and the KL probe's held-out 32: each made once, on rank 0.
    assert len(list((tmp_path / "cache" / "self_dialogues").glob("*.jsonl"))) == 2
    assert out.count("generated 12 self-dialogues") == 1
    assert out.count("generated 32 self-dialogues") == 1
    assert out.count("results: ") == 1
    assert identity(compose_config(SMALL))["seed"] == results["identity"]["seed"]
