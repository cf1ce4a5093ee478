"""Chat data: reading JSONL files, building the training mix, tokenizing with assistant masks.

The on-disk schema, one JSON object per line, is either
    {"prompt": "...", "response": "..."}          a single exchange, or
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]}
Extra keys (for example "answer" for scoring) are kept and ignored by training.
"""

from __future__ import annotations

import glob
import json
import random
import re
from pathlib import Path

from .cache import publish
from .errors import SasftError

Dialogue = list[dict]  # [{"role": ..., "content": ...}, ...]
ROLES = {"system", "user", "assistant"}


class DataError(SasftError, ValueError):
    """A data file that cannot be used; the message names the file and line."""


def check_record(record, where: str) -> None:
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


def matching_paths(pattern: str) -> list[Path]:
    """A file, or a glob of files (a dataset downloaded as several Parquet shards)."""
    if any(c in pattern for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise DataError(f"no data file matches {pattern}")
        return found
    path = Path(pattern)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return [path]


def read_records(pattern: str | Path, limit: int | None = None) -> list[tuple[str, dict]]:
    """Raw records of local JSONL or Parquet files (a glob for shards), each with where it came
    from (file:line or file:row) for error messages; at most `limit` of them."""
    records: list[tuple[str, dict]] = []
    for path in matching_paths(str(pattern)):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            records += [(f"{path}:row {i}", r) for i, r in enumerate(rows)]
        else:
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                        f"{type(record).__name__}")
                    records.append((f"{path}:{lineno}", record))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(f"data file is empty: {pattern}")
    return records[:limit] if limit is not None else records


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a data file in the chat schema, each checked; a problem names the file
    and the line."""
    records = read_records(path)
    for where, record in records:
        check_record(record, where)
    return [record for _, record in records]


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    publish(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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


# `{% generation %}` blocks let the template itself mark assistant tokens. The toy template has
# them; the templates real models ship with (Llama-3.x, Qwen2.5) do not.
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _assistant_char_spans(tokenizer, dialogue: Dialogue) -> tuple[str, list[tuple[int, int]]]:
    """The rendered dialogue and the character span of each assistant turn, found by
    rendering prefixes: turn i spans from the end of `dialogue[:i]` plus the assistant header
    to the end of `dialogue[:i+1]`, so it includes the end-of-turn token the model must learn
    to emit. Needs a template whose render of a prefix is a prefix of the whole render (true
    of Llama-3.x, Qwen2.5 and ChatML templates); any other fails loudly, never silently."""
    def render(messages, generation_prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    text = render(dialogue)
    spans = []
    for i, message in enumerate(dialogue):
        if message["role"] != "assistant":
            continue
        start, end = render(dialogue[:i], True), render(dialogue[: i + 1])
        if not (text.startswith(end) and end.startswith(start)):
            raise DataError(
                "the chat template renders a conversation prefix differently from the start of "
                "the whole conversation, so assistant tokens cannot be located; add "
                "{% generation %} blocks around assistant content in the template"
            )
        # Up to the end-of-turn token, not the newline some templates (ChatML) write after it.
        stop = len(end.rstrip())
        spans.append((len(start), stop))
    return text, spans


def tokenize(tokenizer, dialogue: Dialogue, max_length: int, assistant_only: bool = True) -> dict:
    """Token ids and labels through the tokenizer's own chat template. With `assistant_only`,
    the loss falls on assistant tokens alone (the SFT convention); without it, on every token
    (how the toy base models are pretrained, so they can also write user turns)."""
    if assistant_only and not _GENERATION_BLOCK.search(tokenizer.chat_template or ""):
        text, spans = _assistant_char_spans(tokenizer, dialogue)
        # The template already holds the special tokens (BOS, headers): add none of our own.
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        truncation=True, max_length=max_length)
        ids = list(enc["input_ids"])
        labels = [t if any(s <= start < e for s, e in spans) else -100
                  for t, (start, _) in zip(ids, enc["offset_mapping"])]
        return {"input_ids": ids, "labels": labels}
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


def token_length(tokenizer, dialogue: Dialogue) -> int:
    """The dialogue's length in tokens through the chat template, uncut."""
    return len(tokenizer.apply_chat_template(dialogue, tokenize=True, return_dict=True)["input_ids"])


def collator(tokenizer):
    """Pads input ids with the pad token and labels with -100 (ignored by the loss)."""
    # Imported here: reading and checking data files (the config checks, the report) needs no
    # transformers.
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
