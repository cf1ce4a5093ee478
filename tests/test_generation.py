"""Self-dialogue generation on the toy model: batching changes nothing but speed, the filters
drop and count what they should, and a generation that cannot succeed stops with an error.
Also the padding-free training option (`train.packing`): same loss as padded batches."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch
from omegaconf import open_dict

from sasft import generation
from sasft.paths import PACKAGE_DIR
from sasft.data import read_jsonl, to_dialogue, tokenize
from sasft.generation import (GenerationError, complete, generate_batch,
                              generate_self_dialogues, hf_sampler, turn_header)
from sasft.train import train_collator


pytestmark = pytest.mark.timeout(120)


def gen_cfg(cfg, **changes):
    gen = cfg.generation.copy()
    with open_dict(gen):
        for key, value in changes.items():
            gen[key] = value
    return gen


def test_batched_equals_one_at_a_time_under_greedy(toy):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, temperature=0.0, max_new_tokens=48)
    # Prompts of different lengths, so the batch is left-padded: a bare user-turn header (the
    # Magpie prompt), a second user turn, and assistant turns after questions of each skill.
    questions = ["What is 12 plus 7?", "Is 3417 odd or even?", "Hi", "What is the opposite of blor?"]
    prompts = [turn_header(tokenizer, []),
               turn_header(tokenizer, [{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Sure! Hello."}])]
    prompts += [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                              add_generation_prompt=True) for q in questions]
    assert len({len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}) > 1

    batched_stats, single_stats = Counter(), Counter()
    batched = complete(model, tokenizer, prompts, gen, batched_stats)
    single = [complete(model, tokenizer, [p], gen, single_stats)[0] for p in prompts]
    assert batched == single
    assert batched_stats["tokens"] == single_stats["tokens"]
    assert sum(t is not None and t != "" for t in batched) >= len(prompts) // 2  # not vacuous

    # The whole multi-turn path: a batch of dialogues against one dialogue at a time.
    sample = hf_sampler(model, tokenizer, gen)
    together, _ = generate_batch(sample, tokenizer, 3, gen)
    alone = [generate_batch(sample, tokenizer, 1, gen)[0][0] for _ in range(3)]
    assert together == alone
    assert together[0] is not None and len(together[0]) == 2 * gen.num_turns


def scripted(outputs: list):
    """A sampler that answers each call with the next scripted turns (one per prompt)."""
    queue = list(outputs)

    def sample(prompts, stats):
        turns = queue.pop(0)
        assert len(turns) == len(prompts)
        stats["tokens"] += sum(len(t or "") for t in turns)
        return turns

    return sample


def test_filters_drop_and_count_empty_truncated_duplicate(toy, monkeypatch):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, num_turns=1, oversample=3.0, batch_size=64)
    sample = scripted([
        ["hi", "", None, "hi", "yo", "hey"],  # user turns: one empty, one truncated
        ["there", "there", None, "you"],      # answers to the 4 left: a duplicate, a truncation
    ])
    monkeypatch.setattr(generation, "make_sampler", lambda *args: (sample, gen.batch_size))
    kept, stats = generate_self_dialogues(model, tokenizer, 2, gen, seed=0)
    assert kept == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}],
        [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "you"}],
    ]
    assert stats["generated"] == 6 and stats["kept"] == 2 and stats["rounds"] == 1
    assert (stats["empty"], stats["truncated"], stats["duplicate"]) == (1, 2, 1)
    assert stats["turns"] == 10 and stats["truncation_rate"] == pytest.approx(0.2)


def test_the_turns_trained_on_are_counted_cut_or_whole_with_their_lengths(toy, monkeypatch):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, num_turns=1, oversample=1.0, batch_size=64, truncated="cut",
                  max_new_tokens=20)
    cut = generation.Truncated
    sample = scripted([["a b", "c d e", "f", "g h"],
                       [cut("One. Two. Thr"), "Yes.", cut("Ok. And"), "No."]])
    monkeypatch.setattr(generation, "make_sampler", lambda *args: (sample, gen.batch_size))
    kept, stats = generate_self_dialogues(model, tokenizer, 4, gen, seed=0)
    assert [d[1]["content"] for d in kept] == ["One. Two.", "Yes.", "Ok.", "No."]
    assert all(type(m["content"]) is str for d in kept for m in d)  # no marker left in the data
    answers = stats["assistant_turns"]
    assert answers["turns"] == 4 and answers["cut_share"] == 0.5
    lengths = sorted(len(tokenizer(d[1]["content"], add_special_tokens=False)["input_ids"])
                     for d in kept)
    assert answers["tokens"]["max"] == lengths[-1] and answers["tokens"]["q10"] == lengths[0]
    assert answers["tokens_written"]["max"] == 20  # a cut answer was at least the limit long
    assert stats["user_turns"]["cut_share"] == 0.0


@pytest.mark.parametrize("why, changes", [
    # Greedy decoding writes the same dialogue every time: all but one are duplicates.
    ("duplicate", {"temperature": 0.0, "max_new_tokens": 48}),
    # No turn can end within 2 tokens: every dialogue is truncated.
    ("truncated", {"max_new_tokens": 2}),
])
def test_a_hopeless_generation_stops_when_its_yield_is_near_zero(toy, monkeypatch, why, changes):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, num_turns=1, batch_size=8, min_yield=0.25, **changes)
    calls = Counter()
    real = generation.make_sampler

    def counting(*args):
        sample, batch_size = real(*args)

        def counted(prompts, stats):
            calls["sampler"] += 1
            return sample(prompts, stats)

        return counted, batch_size

    monkeypatch.setattr(generation, "make_sampler", counting)
    with pytest.raises(GenerationError, match="min_yield") as error:
        generate_self_dialogues(model, tokenizer, 4, gen, seed=0)
    assert why in str(error.value)
    # One round of ceil(4 * 1.25) = 5 dialogues (one batch) keeps at most 1: yield 0.2 < 0.25.
    assert calls["sampler"] <= 2


def test_a_missing_vllm_is_a_clear_error(toy):
    """(An unknown backend is refused with the config: tests/test_bad_input.py.)"""
    model, tokenizer, cfg = toy
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: the missing-vllm error cannot be checked")
    with pytest.raises(GenerationError, match=r"pip install -e '\.\[vllm\]'"):
        generate_self_dialogues(model, tokenizer, 1, gen_cfg(cfg, backend="vllm"), seed=0)


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(toy):
    """`train.packing` only removes padding: on the same examples the loss agrees within
    1e-5 and every gradient entry within 1e-4 (fp32; only the summation order differs)."""
    model, tokenizer, cfg = toy
    # Short task examples and long external dialogues: a padded batch with much padding.
    records = (read_jsonl(cfg.task.train_file)[:5]
               + read_jsonl(PACKAGE_DIR / "toy/data/external_chat.jsonl")[:3])
    rows = [tokenize(tokenizer, to_dialogue(r), cfg.train.max_seq_len) for r in records]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the padded batch has padding

    def loss_and_grads(packing: bool):
        train_cfg = cfg.train.copy()
        with open_dict(train_cfg):
            train_cfg.packing = packing
        batch = {k: v.to(model.device)  # the GPU, where there is one
                 for k, v in train_collator(tokenizer, train_cfg)(rows).items()}
        assert ("attention_mask" in batch) != packing and batch["input_ids"].shape[0] == (
            1 if packing else len(rows))
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    padded_loss, padded_grads = loss_and_grads(False)
    packed_loss, packed_grads = loss_and_grads(True)
    model.zero_grad()
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    for a, b in zip(padded_grads, packed_grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_kept_dialogues_survive_a_failure_and_a_rerun_continues_from_them(toy, monkeypatch,
                                                                         tmp_path):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, num_turns=1, oversample=1.0, batch_size=4, min_yield=0.9)
    progress = tmp_path / "entry.partial.jsonl"
    # First attempt: 2 of the 3 dialogues needed, a yield (2/3) below min_yield: it stops.
    first = scripted([["a", "b", None], ["1", "2"]])
    monkeypatch.setattr(generation, "make_sampler", lambda *args: (first, gen.batch_size))
    with pytest.raises(GenerationError, match="They are kept: running again continues"):
        generate_self_dialogues(model, tokenizer, 3, gen, seed=0, progress=progress)
    assert len(read_jsonl(progress)) == 2
    # A half-written line (the process killed while appending) is ignored.
    progress.write_text(progress.read_text() + '{"messages": [{"role": "us')
    # The rerun asks only for the missing one and keeps the two it finds.
    second = scripted([["d"], ["4"]])
    monkeypatch.setattr(generation, "make_sampler", lambda *args: (second, gen.batch_size))
    kept, stats = generate_self_dialogues(model, tokenizer, 3, gen, seed=0, progress=progress)
    assert [d[0]["content"] for d in kept] == ["a", "b", "d"]
    assert stats["resumed"] == 2 and stats["generated"] == 1 and stats["kept"] == 3


def test_the_cache_keeps_partial_work_until_the_entry_is_made(toy, monkeypatch, tmp_path):
    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, num_turns=1, oversample=1.0, batch_size=4, min_yield=0.9)
    monkeypatch.setattr(generation, "make_sampler",
                        lambda *args: (scripted([["a", None, None, None], ["1"]]), 4))
    with pytest.raises(GenerationError):
        generation.cached_self_dialogues(model, tokenizer, 4, gen, 0, "fp", tmp_path)
    entry = generation.cache_path("fp", 4, gen, 0, tmp_path)
    partial = entry.with_suffix(".partial.jsonl")
    assert not entry.exists() and len(read_jsonl(partial)) == 1
    monkeypatch.setattr(generation, "make_sampler",
                        lambda *args: (scripted([["b", "c", "d"], ["2", "3", "4"]]), 4))
    dialogues, stats = generation.cached_self_dialogues(model, tokenizer, 4, gen, 0, "fp",
                                                        tmp_path)
    assert [d[0]["content"] for d in dialogues] == ["a", "b", "c", "d"]
    assert stats["resumed"] == 1 and not partial.exists()  # done: the partial file goes
    assert stats["turns"] == 6 and stats["truncation_rate"] == 0.0  # this call's turns


@pytest.mark.parametrize("per_seed", [False, True])
def test_held_out_dialogues_are_never_a_training_set(toy, tmp_path, per_seed):
    """The KL probe's, EWC's and the drift analysis's dialogues come from streams of their own:
    with the same count as a training mix (the same cache key but for the seed), under either
    per_seed, they are other draws in other cache files, for every training seed."""
    from sasft.analyze import ANALYSIS_SEED
    from sasft.kl import KL_SEED
    from sasft.method import FISHER_SEED

    model, tokenizer, cfg = toy
    gen = gen_cfg(cfg, per_seed=per_seed, batch_size=8)
    held_out = {s: generation.cached_self_dialogues(model, tokenizer, 6, gen, s, "fp", tmp_path)[0]
                for s in (KL_SEED, FISHER_SEED, ANALYSIS_SEED)}
    texts = {s: {str(d) for d in ds} for s, ds in held_out.items()}
    for seed in (0, 1, 2):
        training, _ = generation.cached_self_dialogues(model, tokenizer, 6, gen, seed, "fp",
                                                       tmp_path)
        for stream_seed, held in texts.items():
            assert held != {str(d) for d in training}
            assert generation.cache_path("fp", 6, gen, generation.generation_seed(gen, stream_seed),
                                         tmp_path) != \
                generation.cache_path("fp", 6, gen, generation.generation_seed(gen, seed), tmp_path)
    assert len({frozenset(t) for t in texts.values()}) == 3  # the held-out streams differ too
    # Resumed draws stay in their namespace: held-out ones above every training seed.
    assert all(generation.draw_seed(s, n) > generation.MAX_TRAINING_SEED
               for s in texts for n in (0, 1, 10**6))
    assert all(generation.draw_seed(s, n) <= generation.MAX_TRAINING_SEED
               for s in (0, generation.MAX_TRAINING_SEED) for n in (0, 1, 10**6))
    files = list((tmp_path / "self_dialogues").glob("*.meta.json"))
    assert len(files) == 3 + (3 if per_seed else 1)


def test_a_training_seed_outside_numpys_range_is_refused(make_cfg):
    from sasft.config import validate
    from sasft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2147483647\], got 2147483648"):
        validate(make_cfg(f"seed={2**31}"))


def test_a_larger_mix_extends_a_smaller_ones_blocks(toy, tmp_path):
    """generation.block: a count above the block is the seed's stream of blocks, so a larger
    mix ratio reuses a smaller one's dialogues; a count up to it is one plain draw, the same as
    without blocks."""
    model, tokenizer, cfg = toy
    blocked = gen_cfg(cfg, block=4, batch_size=8)
    plain = gen_cfg(cfg, block=None, batch_size=8)

    def draw(gen, count, seed=0):
        return generation.cached_self_dialogues(model, tokenizer, count, gen, seed, "fp", tmp_path)

    first = draw(blocked, 4)[0]
    assert first == draw(plain, 4)[0]                         # block 0 is the seed's plain draw
    six, stats6 = draw(blocked, 6)
    ten, stats10 = draw(blocked, 10)
    assert six[:4] == first and ten[:6] == six                # nested: each extends the last
    assert len({str(d) for d in ten}) == 10
    assert ten != draw(plain, 10)[0]                          # blocks are other draws than one
    assert draw(blocked, 10, seed=1)[0][:4] == draw(plain, 4, seed=1)[0] != first
    assert len(stats10["blocks"]) == 3 and stats10["kept"] == 10 and stats10["cached"] is False
    assert stats6["cached"] is False and draw(blocked, 6)[1]["cached"] is True  # made, then read
    assert stats10["assistant_turns"]["turns"] == 10 * blocked.num_turns and 0 <= stats10["truncation_rate"] <= 1
    assert generation.block_seed(0, 0) == 0 and generation.block_seed(3, 2) != 3
    held = generation.HELD_OUT_BASE + 5
    assert generation.block_seed(held, 7) > generation.MAX_TRAINING_SEED
