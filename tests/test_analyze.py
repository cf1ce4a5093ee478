"""Drift analysis on a tiny random Llama with the toy tokenizer: every measure is exactly zero
for a model compared with itself and positive after one optimizer step; the leakage rules;
the sweep CLI; and the report's "Drift" section built from the drift.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from sasft import analyze
from sasft.report import cli as report, stats
from sasft.data import tokenize
from sasft.rundir import identity_hash, variant
from sasft.record import summarize, write_results
from sasft.toy.tokenizer import build_tokenizer
from sasft.paths import PACKAGE_DIR
from tests.conftest import compose_config

GENERAL = [{"prompt": f"What is {a} plus {b}?", "response": f"Sure! The answer is {a + b}."}
           for a, b in ((1, 2), (3, 4), (5, 1), (2, 2), (7, 0), (6, 3))]
TASK = [[{"role": "user", "content": f"Is {n} odd or even?"},
         {"role": "assistant", "content": "odd" if n % 2 else "even"}] for n in range(8)]
# Small and permissive: a random model rarely stops, so short turns and many tries.
SETTINGS = analyze.Settings(dialogues=4, max_prompts=6, batch_size=8, max_len=128)
# The runs' self-dialogue settings (their config's generation), which the analysis samples with.
MODEL = OmegaConf.to_container(compose_config([]).model)
GENERATION = {**compose_config([]).generation, "num_turns": 1, "max_new_tokens": 64,
              "oversample": 16, "min_yield": 0.01, "batch_size": 64}


def tiny_model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def one_step(model, tokenizer) -> None:
    """One Adam step on terse task answers: the smallest fine-tuning there is."""
    rows = [tokenize(tokenizer, d, 64) for d in TASK]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"]))
                        for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()


def write_run(root: Path, name: str, base_dir: Path, general_file: Path, model=None,
              tokenizer=None, general_delta: float = 0.0) -> Path:
    run_dir = root / "tiny" / "parity" / name / "ratio1.0_seed0"
    run_dir.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(run_dir / "model")
        tokenizer.save_pretrained(run_dir / "model")
    scores = {"parity": {"base": 0.5, "final": 0.9, "delta": 0.4, "kind": "in_domain"},
              "arithmetic": {"base": 0.6, "final": 0.6 + general_delta, "delta": general_delta,
                             "kind": "general"}}
    # As a run records it: the whole model config, here a local checkpoint (not a toy to build).
    config = {"model": {**MODEL, "name": "tiny", "path": str(base_dir), "toy": None,
                        "builder": None, "style_prefix": None},
              "eval": {"general": {"arithmetic": {"file": str(general_file), "max_gen_toks": 8}}},
              "generation": GENERATION,
              "cache_dir": str(root / "cache")}
    mixes = name in ("sasft", "ext_mix")
    ident = {"model.name": "tiny", "task.name": "parity", "method.name": name, "seed": 0}
    write_results(run_dir, {"run": {"model": "tiny", "task": "parity", "method": name,
                                    "mix_ratio": 1.0 if mixes else None, "mixes_data": mixes,
                                    "seed": 0, "variant": identity_hash(variant(ident))},
                            "scores": scores, "summary": summarize(scores), "history": [],
                            "identity": ident, "config": config})
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A base model, a run whose 'fine-tuned' model is the base itself, one after one step,
    and one that kept no weights."""
    root = tmp_path_factory.mktemp("drift")
    tokenizer = build_tokenizer()
    model = tiny_model(tokenizer)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    general = root / "arithmetic.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in GENERAL))
    write_run(root, "task_only", root / "base", general, model, tokenizer, general_delta=0.0)
    one_step(model, tokenizer)
    write_run(root, "sasft", root / "base", general, model, tokenizer, general_delta=-0.2)
    write_run(root, "freeze", root / "base", general)  # no model/: cannot be analyzed
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    one_step(lora, tokenizer)
    write_run(root, "ext_mix", root / "base", general, lora, tokenizer,  # saves the adapter
              general_delta=-0.05)
    done, failed = analyze.analyze(root, SETTINGS)
    assert sorted(r.method for r in done) == ["ext_mix", "sasft", "task_only"]
    assert [d.parts[-2] for d, _ in failed] == ["freeze"]
    return root


def drift_of(sweep: Path, method: str) -> dict:
    return json.loads((sweep / "tiny" / "parity" / method / "ratio1.0_seed0" /
                       analyze.DRIFT_FILE).read_text())


def weight_values(weights: dict) -> list[float]:
    per_layer = [v for layer in weights["layers"] for k, v in layer.items() if k != "layer"]
    return per_layer + [weights[k] for k in ("embeddings", "lm_head", "global", "mean_layer")]


def test_a_model_compared_with_itself_has_zero_drift(sweep):
    drift = drift_of(sweep, "task_only")
    weights = drift["weights"]
    assert [layer["layer"] for layer in weights["layers"]] == [0, 1]
    assert set(weights["layers"][0]) >= {"q", "k", "v", "o", "gate", "up", "down", "norm", "all"}
    assert all(v == 0.0 for v in weight_values(weights))
    assert weights["unmatched"] == []
    nll = drift["self_dialogue_nll"]
    assert nll["increase"] == 0.0 and nll["base"] > 0
    assert nll["dialogues"]["count"] == 4 and nll["dialogues"]["seed"] == analyze.ANALYSIS_SEED
    assert drift["kl"]["mean"] == 0.0 and drift["kl"]["last_prompt_token"] == 0.0
    assert drift["kl"]["prompts"] == len(GENERAL)
    leak = drift["style_leakage"]
    assert leak["rule"] == "length_proxy"  # the config names no house style
    assert leak["share"] == 0.0 and leak["prompts"] == len(GENERAL)
    answers = drift["answer_nll"]
    assert answers["increase"] == 0.0 and answers["base_answers"] > 0


def test_one_optimizer_step_makes_every_measure_positive(sweep):
    drift = drift_of(sweep, "sasft")
    assert all(v > 0 for v in weight_values(drift["weights"]))
    assert drift["self_dialogue_nll"]["increase"] > 0
    assert drift["kl"]["mean"] > 0 and drift["kl"]["last_prompt_token"] > 0
    assert 0.0 <= drift["style_leakage"]["share"] <= 1.0
    # The base's own greedy answers are its likeliest: any other answer scores worse under it.
    assert drift["answer_nll"]["increase"] > 0


def test_a_lora_adapter_moves_only_what_it_adapts(sweep):
    run_model = sweep / "tiny" / "parity" / "ext_mix" / "ratio1.0_seed0" / "model"
    assert (run_model / "adapter_config.json").is_file()
    weights = drift_of(sweep, "ext_mix")["weights"]
    for layer in weights["layers"]:
        assert layer["q"] > 0 and layer["v"] > 0
        assert all(layer[k] == 0.0 for k in ("k", "o", "gate", "up", "down", "norm"))
    assert weights["embeddings"] == 0.0 and weights["lm_head"] == 0.0
    assert weights["unmatched"] == []


def test_a_second_analysis_skips_analyzed_runs_and_retries_failed_ones(sweep):
    done, failed = analyze.analyze(sweep, SETTINGS)
    assert done == [] and len(failed) == 1  # only the run without weights is retried


def test_style_leakage_counts_a_lost_house_prefix_or_a_shorter_answer():
    assert analyze.is_leaked("Sure! The answer is 7.", "7", prefix="Sure!") is True
    assert analyze.is_leaked("Sure! The answer is 7.", "Sure! It is 7.", prefix="Sure!") is False
    assert analyze.is_leaked("The answer is 7.", "7", prefix="Sure!") is None  # base off-style
    assert analyze.is_leaked("a long answer", "short", prefix=None) is True  # 5 < 6.5
    assert analyze.is_leaked("a long answer", "a long reply", prefix=None) is False
    assert analyze.is_leaked("", "x", prefix=None) is None
    leak = analyze.style_leakage({"b": ["Sure! 1", "Sure! 2", "odd"]},
                                 {"b": ["1", "Sure! 2", "odd"]}, prefix="Sure!")
    assert (leak["leaked"], leak["counted"], leak["prompts"]) == (1, 2, 3)
    assert leak["share"] == 0.5 and leak["rule"] == "house_prefix"


def test_answer_nll_scores_the_answer_not_the_prompt(toy):
    model, tokenizer, _ = toy
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Is 12 odd or even?"}],
                                           tokenize=False, add_generation_prompt=True)
    likely = analyze.greedy_answers(model, tokenizer, [prompt], 16, batch_size=1)[0]
    assert analyze.answer_nll(model, tokenizer, [prompt], [""], 4) is None
    base = analyze.answer_nll(model, tokenizer, [prompt], [likely], 4)
    odd = analyze.answer_nll(model, tokenizer, [prompt], ["zebra zebra zebra"], 4)
    assert 0 < base < odd
    # Batched with a longer prompt and padding, an answer scores as it does alone.
    long = prompt.replace("Is 12", "Is the number 12, which you know well,")
    both = analyze.answer_nll(model, tokenizer, [long, prompt], ["odd", likely], 4)
    alone = analyze.answer_nll(model, tokenizer, [long], ["odd"], 4)
    n_odd, n_likely = (len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ("odd", likely))
    assert both == pytest.approx((alone * n_odd + base * n_likely) / (n_odd + n_likely), rel=1e-4)


def test_each_weight_is_grouped_by_its_layer_and_kind():
    assert analyze.groups_of("model.layers.3.self_attn.q_proj.weight")[0] == ("layer", 3, "q")
    assert analyze.groups_of("model.layers.0.self_attn.k_proj.bias")[0] == ("layer", 0, "k")
    assert analyze.groups_of("model.layers.1.mlp.down_proj.weight")[0] == ("layer", 1, "down")
    assert analyze.groups_of("model.layers.1.input_layernorm.weight")[0] == ("layer", 1, "norm")
    assert analyze.groups_of("model.embed_tokens.weight")[0] == ("embeddings",)
    assert analyze.groups_of("lm_head.weight")[0] == ("lm_head",)
    assert analyze.groups_of("model.norm.weight") == [("other",), ("global",)]


def test_the_report_drift_section_relates_weight_change_to_forgetting(sweep, tmp_path):
    rep = report.build_report(sweep, out_dir=tmp_path / "report")
    md = (rep.out_dir / "report.md").read_text()
    drift = md.split("## Drift")[1].split("## Missing runs")[0]
    assert "3 runs analyzed" in drift
    assert "Pearson r" in drift and "self-dialogue NLL increase" in drift
    assert "answer NLL under the base" in drift
    # The more a run's weights moved, the more it forgot: 0 / -0.05 / -0.2 in this sweep.
    row = next(line for line in drift.splitlines() if line.startswith("| weight change"))
    assert float(row.split("|")[2]) < 0
    assert "length proxy" in drift
    for name in ("fig_drift_layers.png", "fig_drift_scatter.png"):
        assert (rep.out_dir / name).stat().st_size > 1000 and f"]({name})" in drift
    assert len((rep.out_dir / "drift.csv").read_text().splitlines()) == 4


def test_pearson_r_is_none_where_it_is_undefined():
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.pearson([1, 2], [1, 2]) is None
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None


def test_general_prompts_come_from_registry_benchmarks_too(tmp_path):
    """eval=general names lm-eval registry tasks only: the analysis used to skip them, find no
    prompt, and divide 0 by 0. Every benchmark now gives its questions, file or registry, as
    the KL probe gets them (sasft/evaluate.py::benchmark_prompts)."""
    from sasft.evaluate import benchmark_prompts

    general = tmp_path / "arithmetic.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in GENERAL))
    benchmarks = {"arithmetic": {"file": str(general), "max_gen_toks": 8},
                  "ifeval_simple": {"lm_eval_task": "sasft_smol_ifeval", "max_gen_toks": 40,
                                    "lm_eval_include": [str(PACKAGE_DIR / "smol/lm_eval_tasks")]}}
    cfg = OmegaConf.create({"eval": {"general": benchmarks}})
    tokenizer = build_tokenizer()
    prompts = analyze.general_prompts(cfg, tokenizer, 3)
    assert {n: (len(p), m) for n, (p, m) in prompts.items()} == {"arithmetic": (3, 8),
                                                                "ifeval_simple": (3, 40)}
    questions = benchmark_prompts(benchmarks, tokenizer.eos_token, 3)
    for name, (texts, _) in prompts.items():
        assert [q in t for q, t in zip(questions[name], texts)] == [True] * 3
    assert questions["arithmetic"] == [r["prompt"] for r in GENERAL[:3]]


@pytest.mark.parametrize("model", ["tiny", "tiny_qwen"])
def test_toy_models_declare_the_house_style_the_toy_world_teaches(model):
    from sasft.toy.world import HOUSE_PREFIX

    assert compose_config([f"model={model}"]).model.style_prefix == HOUSE_PREFIX
