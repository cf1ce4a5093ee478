"""Data files, the training mix and assistant-only labels."""

from __future__ import annotations

from collections import Counter

from sasft.data import build_mix, read_jsonl, to_dialogue, tokenize, write_jsonl
from sasft.toy.tokenizer import build_tokenizer


def _dialogue(i: int) -> list[dict]:
    return to_dialogue({"prompt": f"q{i}", "response": f"a{i}"})


def test_mix_holds_every_task_example_and_the_auxiliary_count():
    task = [_dialogue(i) for i in range(10)]
    aux = [_dialogue(100 + i) for i in range(5)]
    mix = build_mix(task, aux, seed=0)
    assert Counter(item["source"] for item in mix) == {"task": 10, "auxiliary": 5}
    assert sorted(str(m["messages"]) for m in mix) == sorted(map(str, task + aux))
    assert build_mix(task, aux, seed=0) == mix  # same seed, same order
    assert build_mix(task, aux, seed=1) != mix


def test_jsonl_round_trip_accepts_both_schemas(tmp_path):
    records = [{"prompt": "p", "response": "r", "answer": "x"},
               {"messages": [{"role": "user", "content": "u"},
                             {"role": "assistant", "content": "a"}]}]
    write_jsonl(tmp_path / "d.jsonl", records)
    assert read_jsonl(tmp_path / "d.jsonl") == records
    assert to_dialogue(records[0])[1] == {"role": "assistant", "content": "r"}


def test_loss_falls_on_assistant_tokens_only():
    tokenizer = build_tokenizer()
    dialogue = to_dialogue({"prompt": "What is 2 plus 2?", "response": "Sure! The answer is 4."})
    row = tokenize(tokenizer, dialogue, max_length=256)
    trained = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(trained) == "Sure! The answer is 4.<|end|>"
    full = tokenize(tokenizer, dialogue, max_length=256, assistant_only=False)
    assert full["labels"] == full["input_ids"]


def test_every_toy_model_loads_the_character_tokenizer():
    # AutoTokenizer maps a qwen2 checkpoint to Qwen2Tokenizer, which drops the spaces of the
    # toy character vocabulary; the toy models must load their own tokenizer unchanged.
    from sasft.config import compose_config
    from sasft.model import load_tokenizer

    for name in ("tiny", "tiny_qwen"):
        tokenizer = load_tokenizer(compose_config([f"model={name}"]).model)
        text = "Sure! It is red."
        assert tokenizer.decode(tokenizer(text).input_ids) == text, name
