"""Decoding that drops finished rows (sasft/decode.py, sasft/eval_lm.py) on the toy model:
greedy, it writes the very tokens transformers' `generate` writes; one row sampled, the very
draws; through lm-eval, the very replies and scores of HFLM."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict
from transformers.cache_utils import DynamicLayer

from sasft.decode import GrowingLayer, decode, picker
from sasft.evaluate import evaluate_items
from sasft.generation import stop_ids, turn_header
from sasft.model import load_model
from sasft.pipeline import benchmarks_of
from sasft.task import load_task


pytestmark = pytest.mark.timeout(300)


def test_a_growing_cache_layer_holds_what_concatenation_holds():
    """Through the prompt, token-by-token appends past several doublings, and rows dropped."""
    torch.manual_seed(0)
    grown, cat = GrowingLayer(), DynamicLayer()
    for step, length in enumerate([5] + [1] * 20):
        if step == 9:  # two of the four rows finish
            keep = torch.tensor([0, 2])
            grown.batch_select_indices(keep)
            cat.batch_select_indices(keep)
        rows = 4 if step < 9 else 2
        k, v = torch.randn(rows, 2, length, 3), torch.randn(rows, 2, length, 3)
        got, want = grown.update(k, v), cat.update(k, v)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), step
        assert grown.get_seq_length() == cat.get_seq_length()
    assert grown._k.shape[-2] == 40  # 5, then doubled to 10, 20, 40: a copy per doubling only


def _prompts(tokenizer):
    questions = ["What is 12 plus 7?", "Is 3417 odd or even?", "Hi", "What is the opposite of blor?"]
    prompts = [turn_header(tokenizer, [])]
    prompts += [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                              add_generation_prompt=True) for q in questions]
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def _generate(model, tokenizer, batch, max_new_tokens, **sampling):
    return model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop_ids(model, tokenizer),
                          pad_token_id=tokenizer.pad_token_id, use_cache=True,
                          do_sample=bool(sampling), **sampling)


def test_greedy_decoding_writes_what_generate_writes(toy):
    model, tokenizer, _ = toy
    batch = _prompts(tokenizer)
    assert (batch["attention_mask"] == 0).any()  # left-padded: rows of different lengths
    expected = _generate(model, tokenizer, batch, 40)
    got = decode(model, batch["input_ids"], batch["attention_mask"], 40,
                 stop_ids(model, tokenizer), tokenizer.pad_token_id)
    assert torch.equal(got, expected)
    ends = [(row == tokenizer.eos_token_id).nonzero().numel() > 0 for row in got[:, batch["input_ids"].shape[1]:]]
    assert any(ends) and got.shape[1] < batch["input_ids"].shape[1] + 40  # rows ended early


def test_one_sampled_row_draws_what_generate_draws(toy):
    model, tokenizer, cfg = toy
    batch = {k: v[1:2] for k, v in _prompts(tokenizer).items()}
    torch.manual_seed(3)
    expected = _generate(model, tokenizer, batch, 30, temperature=0.7, top_k=50, top_p=0.9)
    torch.manual_seed(3)
    got = decode(model, batch["input_ids"], batch["attention_mask"], 30,
                 stop_ids(model, tokenizer), tokenizer.pad_token_id, picker(0.7, 0.9, 50))
    assert torch.equal(got, expected)


def test_lm_eval_replies_and_scores_are_those_of_hflm(make_cfg):
    cfg = make_cfg()
    model, tokenizer = load_model(cfg.model)
    benchmarks, _ = benchmarks_of(cfg, load_task(cfg.task))
    results = []
    for drop in (False, True):
        with open_dict(cfg.eval):
            cfg.eval.drop_finished = drop
            cfg.eval.limit = 16
        results.append(evaluate_items(model, tokenizer, benchmarks, cfg.eval))
    assert results[0] == results[1]
    assert any(r["items"] and r["items"][0]["answer"] for r in results[1].values())
