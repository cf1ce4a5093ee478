"""Each method changes exactly what it claims: sdft the answers (not the prompts), replay the
mix's counts, l2_base/ewc the loss (zero at the base weights, only on trainable parameters);
and the KL probe reads zero for the base model against itself."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from sasft import method as methods
from sasft.errors import ConfigError
from sasft.data import collator, read_jsonl, tokenize, to_dialogue
from sasft.kl import KLProbe
from sasft.method import MethodContext, final_answer
from sasft.model import load_model
from sasft.peft import apply_peft
from sasft.pipeline import data_mix, method_context
from sasft.schema import benchmark_spec
from sasft.task import load_task
from sasft.toy.tokenizer import build_tokenizer

GSM8K_SPEC = {"file": "x", "answer_regex": "(-?[0-9][0-9,]*(?:\\.[0-9]+)?)",
              "regexes_to_ignore": [",", "\\.0+$"]}


def test_final_answer_is_what_the_test_compares():
    spec = benchmark_spec(GSM8K_SPEC)
    assert final_answer("She pays 3 + 4 = 7 dollars.\n#### 1,000", spec) == "1000"
    assert final_answer("18.00 in all", spec) == "18"
    assert final_answer("no number", spec) == ""
    plain = benchmark_spec({"file": "x"})  # the toy tasks: the whole reply, exactly
    assert final_answer(" odd", plain) == "odd" and final_answer("Sure! odd", plain) != "odd"


def test_sdft_rewrites_answers_keeps_prompts_and_falls_back(monkeypatch, tmp_path):
    task = [[{"role": "user", "content": f"q{i}"},
             {"role": "assistant", "content": f"Steps.\n#### {i}"}] for i in range(4)]
    scripted = ["I add them up: the answer is 0.", "So we get 7.", None, "It is 3 in all."]
    seen = []

    def fake_complete(model, tokenizer, prompts, cfg, *args, **kwargs):
        seen.extend(prompts)
        assert cfg.temperature == 0  # greedy rewrites
        return scripted[:len(prompts)]

    monkeypatch.setattr(methods, "complete", fake_complete)
    sdft = methods.SelfDistillation(template="{prompt} / ref: {response} / own words")
    ctx = MethodContext(None, build_tokenizer(), None, "fp", tmp_path, 0, GSM8K_SPEC)
    out, stats = sdft.rewrite(task, ctx)

    assert [d[:-1] for d in out] == [d[:-1] for d in task]  # prompts unchanged
    assert "q1 / ref: Steps.\n#### 1 / own words" in seen[1]
    assert [d[-1]["content"] for d in out] == [
        "I add them up: the answer is 0.",   # rewritten, same final answer
        "Steps.\n#### 1",                    # 7 != 1: falls back to the reference
        "Steps.\n#### 2",                    # cut at max_new_tokens: falls back
        "It is 3 in all."]
    assert stats == {"rewritten": 2, "fell_back_wrong": 1, "fell_back_truncated": 1,
                     "answers_checked": True}
    monkeypatch.setattr(methods, "complete", None)  # cached: no generation the second time
    assert sdft.rewrite(task, ctx)[0] == out


def test_replay_mixes_the_intended_counts_from_the_base_models_own_data(make_cfg):
    cfg = make_cfg("method=replay", "mix_ratio=0.5")
    method = instantiate(cfg.method)
    method.check(None)
    task = load_task(cfg.task)
    ctx = method_context(cfg, None, None, "fp", task)
    mix, auxiliary, stats = data_mix(cfg, method, task, ctx)
    corpus = [to_dialogue(r) for r in read_jsonl(cfg.method.corpus_file)]
    assert len(task.train) == 24 and len(auxiliary) == 12
    assert [m["source"] for m in mix].count("auxiliary") == 12 and len(mix) == 36
    assert all(d in corpus for d in auxiliary)
    assert stats == {"corpus": cfg.method.corpus_file}


def test_replay_corpus_is_the_toy_models_pretraining_data(make_cfg):
    from sasft.toy import world

    cfg = make_cfg("method=replay")
    first = [to_dialogue(r) for r in read_jsonl(cfg.method.corpus_file)[:50]]
    assert cfg.model.toy.pretrain.seed == 0
    assert first == world.pretraining_dialogues(cfg.model.toy.pretrain.dialogues, seed=0)[:50]


def _batch(tokenizer, n=4):
    dialogues = [[{"role": "user", "content": f"Is {i} odd or even?"},
                  {"role": "assistant", "content": "odd" if i % 2 else "even"}] for i in range(n)]
    rows = [tokenize(tokenizer, d, 64) for d in dialogues]
    return dialogues, collator(tokenizer)(rows)


def _step(model, batch, penalty):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    loss = model(**batch).loss + penalty(model)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("name", ["l2_base", "ewc"])
def test_penalty_is_zero_at_the_base_and_grows_only_on_trainable_parameters(make_cfg, name):
    cfg = make_cfg("method=freeze", "method.trainable_layers=1")
    model, tokenizer = load_model(cfg.model)
    instantiate(cfg.method).select_trainable(model)  # the top layer and the head train
    dialogues, batch = _batch(tokenizer)
    fisher = None
    if name == "ewc":
        fisher = methods.diagonal_fisher(model, tokenizer, dialogues, 64)
        flat = torch.cat([f.flatten() for f in fisher.values()])
        assert flat.mean().item() == pytest.approx(1.0, rel=1e-5) and (flat >= 0).all()
    penalty = methods.WeightPenalty(model, strength=1.0, fisher=fisher)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    assert penalty(model).item() == 0.0
    value = penalty(model)
    value.backward()  # at theta0 its gradient is zero, but it reaches only trainable ones
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    model.zero_grad()
    _step(model, batch, penalty)
    assert penalty(model).item() > 0
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])


def test_l2_base_under_lora_penalises_the_adapters_weight_change(make_cfg):
    cfg = make_cfg("method=l2_base", "peft=lora")
    model, tokenizer = load_model(cfg.model)
    method = instantiate(cfg.method)
    model = apply_peft(model, cfg.peft, method)
    penalty = method.penalty(model, None)
    assert penalty.lora and penalty(model).item() == 0.0  # B starts at zero: W = W0
    _step(model, _batch(tokenizer)[1], penalty)
    assert penalty(model).item() > 0


def test_ewc_refuses_lora_before_anything_loads(make_cfg):
    method = instantiate(make_cfg("method=ewc", "peft=lora").method)
    with pytest.raises(ConfigError, match="method=ewc with peft=lora"):
        method.check(None, "lora")


def test_kl_is_zero_for_the_base_model_against_itself(make_cfg):
    cfg = make_cfg()
    model, tokenizer = load_model(cfg.model)
    dialogues, batch = _batch(tokenizer, 6)
    probe = KLProbe(model, tokenizer, dialogues, ["What color is a pubi?", "Is 3 odd?"], 64,
                    batch_size=4)
    assert probe(model) == {"kl_self": pytest.approx(0.0, abs=1e-6),
                            "kl_prompts": pytest.approx(0.0, abs=1e-6)}
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # another model: the KL is no longer zero
    moved = probe(model)
    assert moved["kl_prompts"] > 1e-4 and moved["kl_self"] != 0.0
