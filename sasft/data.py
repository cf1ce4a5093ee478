"""Chat data: reading JSONL files, building the training mix, tokenizing with assistant masks.

The on-disk schema, one JSON object per line, is either
    {"prompt": "...", "response": "..."}          a single exchange, or
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]}
Extra keys (for example "answer" for scoring) are kept and ignored by training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import DataCollatorForSeq2Seq

Dialogue = list[dict]  # [{"role": ..., "content": ...}, ...]
ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


def _check_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise DataError(f"{where}: messages[{i}] needs a 'role' in {sorted(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] needs a string 'content'")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: 'messages' has no assistant turn to train on")
        return
    for key in ("prompt", "response"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(
                f"{where}: needs a non-empty string {key!r} (or a 'messages' list); "
                f"keys found: {sorted(record)}"
            )


def read_jsonl(path: str | Path) -> list[dict]:
    """Read and validate a JSONL data file; every problem names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
            _check_record(record, where)
            records.append(record)
    if not records:
        raise DataError(f"data file is empty: {path}")
    return records


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def to_dialogue(record: dict) -> Dialogue:
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["response"]},
    ]


def build_mix(task: list[Dialogue], auxiliary: list[Dialogue], seed: int) -> list[dict]:
    """The training set: every task dialogue plus the auxiliary ones, shuffled together.
    Each item keeps its source so the mix can be counted and inspected."""
    mix = [{"source": "task", "messages": d} for d in task]
    mix += [{"source": "auxiliary", "messages": d} for d in auxiliary]
    random.Random(seed).shuffle(mix)
    return mix


def tokenize(tokenizer, dialogue: Dialogue, max_length: int, assistant_only: bool = True) -> dict:
    """Token ids and labels through the tokenizer's own chat template. With `assistant_only`,
    the loss falls on assistant tokens alone (the SFT convention); without it, on every token
    (how the toy base models are pretrained, so they can also write user turns)."""
    enc = tokenizer.apply_chat_template(
        dialogue,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=assistant_only,
        truncation=True,
        max_length=max_length,
    )
    ids = list(enc["input_ids"])
    if assistant_only:
        labels = [t if m else -100 for t, m in zip(ids, enc["assistant_masks"])]
    else:
        labels = list(ids)
    return {"input_ids": ids, "labels": labels}


def collator(tokenizer):
    """Pads input ids with the pad token and labels with -100 (ignored by the loss)."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
