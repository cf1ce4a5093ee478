"""Decoding that drops finished rows (sasft/decode.py, sasft/eval_lm.py) on the toy model:
greedy, it writes the very tokens transformers' `generate` writes; one row sampled, the very
draws; through lm-eval, the very replies and scores of HFLM."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict
from transformers.cache_utils import DynamicLayer

from sasft import decode as decode_module
from sasft.decode import GrowingLayer, decode, length_groups, picker, trim_columns
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


def _recorded(trim, mask, cache, widths):
    mask = trim(mask, cache)
    widths.append(mask.shape[1])
    return mask


def test_rows_of_very_different_lengths_are_prefilled_in_groups_with_the_same_tokens(
        toy, monkeypatch):
    """A long prompt among short ones: the prompt pass runs in length groups and the padding
    is trimmed once the long row has left, and decoding still writes generate's tokens
    (greedy) and the untrimmed batch's draws (sampled)."""
    model, tokenizer, _ = toy
    long = "Tell me a story about " + " and ".join(["a red fox"] * 30) + "."
    questions = ["Hi", "What is 12 plus 7?", long, "Is 3417 odd or even?"]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in questions]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    groups = length_groups(batch["attention_mask"].sum(-1).tolist())
    assert len(groups) > 1 and groups[0] == [2]  # the long prompt alone
    stop = stop_ids(model, tokenizer)
    expected = _generate(model, tokenizer, batch, 30)
    widths, trim_columns = [], decode_module.trim_columns
    monkeypatch.setattr(decode_module, "trim_columns",
                        lambda mask, cache: _recorded(trim_columns, mask, cache, widths))
    assert torch.equal(decode(model, batch["input_ids"], batch["attention_mask"], 30, stop,
                              tokenizer.pad_token_id, trim_padding=True), expected)
    assert widths and min(widths) < batch["input_ids"].shape[1] // 4  # the long row's padding went
    sampled = []
    for trim in (True, False):
        torch.manual_seed(5)
        sampled.append(decode(model, batch["input_ids"], batch["attention_mask"], 30, stop,
                              tokenizer.pad_token_id, picker(1.0, 1.0, 50), trim_padding=trim))
    assert torch.equal(*sampled)


def test_padding_no_remaining_row_needs_leaves_the_mask_and_the_cache():
    from transformers import DynamicCache

    layer = GrowingLayer()
    keys = torch.arange(2 * 5, dtype=torch.float).reshape(2, 1, 5, 1)
    layer.update(keys, -keys)
    cache = DynamicCache()
    cache.layers = [layer]
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])  # the long row has left already
    trimmed = trim_columns(mask, cache)
    assert trimmed.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert torch.equal(layer.keys, keys[..., 2:, :]) and torch.equal(layer.values, -keys[..., 2:, :])
    assert layer.get_seq_length() == 3 and trim_columns(trimmed, cache) is trimmed
    layer.update(torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1))  # appends after the trim
    assert layer.keys.shape[-2] == 4 and layer.keys[0, 0, -1, 0] == 1


def test_length_groups_bound_each_groups_padding():
    # Longest first; a row joins while at least half the group's longest.
    assert length_groups([10, 1300, 12, 700, 600, 40, 25]) == [[1, 3], [4], [5, 6], [2, 0]]
    assert length_groups([5]) == [[0]]


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
