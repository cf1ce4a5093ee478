"""Every method end to end on the shrunk toy world, through the function run.py calls."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from sasft import generation
from sasft.pipeline import run_experiment
from sasft.record import RESULTS_FILE
from sasft.train import training_arguments
from tests.conftest import compose_config

pytestmark = pytest.mark.slow


MIXING = ("ext_mix", "replay", "sasft")


@pytest.mark.parametrize("method", ["task_only", "freeze", "ext_mix", "replay", "sdft",
                                    "l2_base", "ewc", "sasft"])
def test_every_method_runs_end_to_end(make_cfg, tmp_path, method):
    cfg = make_cfg(f"method={method}", "mix_ratio=0.5", "train.eval_every_steps=2")
    if method == "ewc":
        cfg.method.fisher_dialogues = 4
    results = run_experiment(cfg, tmp_path / "run")

    on_disk = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    mixes = method in MIXING
    run = dict(on_disk["run"])
    assert len(run.pop("identity")) == len(run.pop("variant")) == 8
    params = run.pop("method_params")
    assert run == {"model": "tiny", "task": "parity", "method": method,
                   "mix_ratio": 0.5 if mixes else None, "seed": 0, "mixes_data": mixes,
                   "peft": "full"}
    assert params.get("mix_ratio") == (0.5 if mixes else None)
    assert on_disk["identity"]["method.name"] == method
    assert on_disk["mix"]["task_truncated"] == {"examples": 24, "cut": 0, "longest": 29}
    assert on_disk["mix"]["auxiliary_truncated"] == 0
    if method == "sasft":  # what the self-dialogues trained on look like
        answers = on_disk["mix"]["auxiliary_stats"]["assistant_turns"]
        assert answers["turns"] == 24 and 0 <= answers["cut_share"] <= 1  # 12 x 2 exchanges
        assert answers["tokens"]["median"] <= answers["tokens_written"]["median"]
    assert set(on_disk) >= {"scores", "summary", "mix", "config", "timings", "versions"}
    kinds = {name: s["kind"] for name, s in on_disk["scores"].items()}
    assert kinds == {"parity": "in_domain", "legs": "general", "colors": "general",
                     "opposites": "general", "capitals": "general"}
    for name, s in on_disk["scores"].items():
        assert 0.0 <= s["base"] <= 1.0 and 0.0 <= s["final"] <= 1.0
        assert s["delta"] == pytest.approx(s["final"] - s["base"])
        items = on_disk["items"][name]  # the same 8 items before and after, each scored
        assert len(items["base"]) == len(items["final"]) == 8
        assert sum(items["final"]) / 8 == pytest.approx(s["final"])
    # Chance: parity is odd/even; capitals is multiple choice (its choices give it).
    assert on_disk["scores"]["parity"]["chance"] == 0.5
    assert 0 < on_disk["scores"]["capitals"]["chance"] < 1
    assert on_disk["scores"]["legs"]["chance"] is None
    evals = [h for h in on_disk["history"] if "eval_in_domain" in h]
    assert evals[0] == {"step": 0, "epoch": 0.0, "eval_in_domain": s_base(on_disk),
                        "eval_kl_self": 0.0, "eval_kl_prompts": 0.0}
    assert len(evals) >= 2 and all(h["eval_kl_prompts"] > 0 for h in evals[1:])
    if method in ("l2_base", "ewc"):
        assert all(h["penalty"] >= 0 for h in on_disk["history"] if "loss" in h)
    expected_aux = 12 if mixes else 0
    assert results["mix"]["task"] == 24
    assert results["mix"]["auxiliary"] == expected_aux
    losses = [h["loss"] for h in results["history"] if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def s_base(results: dict) -> float:
    return results["scores"]["parity"]["base"]


def test_self_dialogues_are_cached_and_reused(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("method=sasft", "mix_ratio=1.0")
    first = run_experiment(cfg, tmp_path / "a")
    assert first["mix"]["auxiliary_stats"]["cached"] is False
    assert first["mix"]["base_scores_computed"]  # the first run scores the base model

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again instead of reusing the cache")

    monkeypatch.setattr(generation, "generate_self_dialogues", no_generation)
    second = run_experiment(cfg, tmp_path / "b")
    assert second["mix"]["auxiliary_stats"]["cached"] is True
    assert second["mix"]["base_scores_computed"] == []  # base scores reused too
    sample = (tmp_path / "b" / "auxiliary_sample.jsonl").read_text().splitlines()
    assert sample == (tmp_path / "a" / "auxiliary_sample.jsonl").read_text().splitlines()


def test_freeze_changes_only_the_trainable_parameters(make_cfg, tmp_path):
    cfg = make_cfg("method=freeze", "method.trainable_layers=1")
    with open_dict(cfg):
        cfg.train.save_model = True
    run_experiment(cfg, tmp_path / "run")
    base = load_file(f"{cfg.model.path}/model.safetensors")
    tuned = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    frozen = [k for k in base if k.startswith(("model.embed_tokens", "model.layers.0.",
                                               "model.layers.1.", "model.layers.2."))]
    trainable = [k for k in base if k.startswith(("model.layers.3.", "lm_head"))]
    assert frozen and trainable
    for k in frozen:
        assert torch.equal(base[k], tuned[k]), f"{k} changed although frozen"
    for k in trainable:
        if k.endswith("layernorm.weight"):
            continue  # norms may barely move in one short epoch; the matrices must
        assert not torch.equal(base[k], tuned[k]), f"{k} did not train"


@pytest.mark.parametrize("overrides, expected", [
    ([], {"train_sampling_strategy": "group_by_length", "use_liger_kernel": False,
          "save_strategy": "no", "bf16": False, "eval_strategy": "steps"}),
    (["train=full", "train.group_by_length=false", "train.use_liger_kernel=true"],
     {"train_sampling_strategy": "random", "use_liger_kernel": True, "save_strategy": "steps",
      "save_steps": 500, "bf16": True, "gradient_accumulation_steps": 8, "learning_rate": 1e-5}),
])
def test_train_config_reaches_the_trainer(tmp_path, overrides, expected):
    """Each `train.*` knob lands in the Trainer's arguments (none is silently dropped)."""
    cfg = compose_config(overrides).train
    args = training_arguments(cfg, tmp_path, seed=3, use_cpu=True, evaluate=True)
    assert {key: getattr(args, key) for key in expected} == expected
    assert (args.seed, args.data_seed) == (3, 3)


def test_periodic_general_scores_on_a_subset(make_cfg, tmp_path):
    """eval.periodic_general_items: each periodic evaluation scores the general benchmarks on
    their first items too, the base once before training, and the last step is evaluated even
    where eval_every_steps does not divide it (forgetting at equal learning, in the report)."""
    cfg = make_cfg("method=task_only", "train.eval_every_steps=5",
                   "eval.periodic_general_items=3")
    results = run_experiment(cfg, tmp_path / "run")
    evals = [h for h in results["history"] if "eval_in_domain" in h]
    general = {f"eval_general_{b}" for b, s in results["scores"].items() if s["kind"] == "general"}
    assert evals[0]["step"] == 0 and all(general <= set(h) for h in evals)
    last = max(h["step"] for h in results["history"] if "step" in h)
    assert evals[-1]["step"] == last and last % 5 != 0
    assert evals[-1]["eval_in_domain"] == pytest.approx(s_base_final(results))
    for key in general:  # 3 items: a score in thirds
        assert all(round(3 * h[key], 6) == round(3 * h[key]) for h in evals)


def s_base_final(results: dict) -> float:
    return results["scores"]["parity"]["final"]
