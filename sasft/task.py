"""Fine-tuning tasks: the training dialogues and the in-domain test, from `conf/task/<name>.yaml`.

A task config takes one of two forms.

1. Data already in sasft's chat schema (the toy tasks, or a user's own files written that way):

       train_file: train.jsonl          # {"prompt", "response"} or {"messages"} per line
       benchmark: {file: test.jsonl, target: response, ...}

2. Any other schema, mapped field by field (every real task), marked by `prompt_template`:

       hub_id: openai/gsm8k             # datasets.load_dataset(hub_id, hub_config, revision=...)
       hub_config: main
       revision: null
       train_split: train               # split names, slices allowed ("train[:1200]")
       test_split: test
       train_file: null                 # local .jsonl / .parquet files win over hub_id
       test_file: null
       prompt_field: question           # record field -> `prompt` (null: use the template only)
       response_field: answer           # record field -> `response`
       answer_field: null               # record field -> `answer`, the gold for scoring
       answer_pattern: "####\\s*(.+)$"  # ... or a regex whose group 1, found in the response,
                                        #     is the answer (GSM8K keeps it after "####")
       prompt_template: "{{ prompt }}"  # Jinja over the record's fields and prompt/response/answer
       response_template: null          # null: the response field as it is
       max_train_examples: 2000         # the first N training records (null: all)
       max_test_examples: 500           # the first N test records (null: all)
       prepared_dir: ${cache_dir}/tasks
       benchmark: {target: answer, answer_regex: ..., metric: exact_match}

   `load_task` renders every training record into a user/assistant exchange and writes the test
   split, rendered by the same templates, as a JSONL file in the chat schema
   ({"prompt", "response", "answer"}) under `prepared_dir`. Its benchmark spec points at that
   file, so the in-domain test is an ordinary local benchmark (sasft/evaluate.py): the prompts
   the model is tested on are the prompts it was trained on, by one code path, and the file can
   be read by a person. Its name is a hash of everything that shaped it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from omegaconf import OmegaConf

from .data import DataError, Dialogue, read_jsonl, to_dialogue, write_jsonl

# Sandboxed (templates come from configs) and strict (a misspelt field is an error, not "").
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)

# Every key that changes the prepared test file; its hash names the file.
_TEST_KEYS = ("hub_id", "hub_config", "revision", "test_split", "test_file", "prompt_field",
              "response_field", "answer_field", "answer_pattern", "prompt_template",
              "response_template", "max_test_examples")


def is_mapped(cfg) -> bool:
    """Whether the task maps a foreign schema (form 2) rather than using sasft's own (form 1)."""
    return cfg.prompt_template is not None


def _paths(pattern: str) -> list[Path]:
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


def read_records(pattern: str, limit: int | None = None) -> list[tuple[str, dict]]:
    """Raw records of local JSONL or Parquet files, each with where it came from (file:line
    or file:row) for error messages; at most `limit` of them."""
    records: list[tuple[str, dict]] = []
    for path in _paths(str(pattern)):
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


def load_hub_split(hub_id: str, config: str | None, split: str, revision: str | None,
                   limit: int | None = None) -> list[tuple[str, dict]]:
    """Records of one split of a hub dataset (downloaded once into the HF datasets cache)."""
    import datasets  # imported here: toy runs never need it

    ds = datasets.load_dataset(hub_id, config, split=split, revision=revision)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))  # before to_list: WMT's train split is 4.5M
    where = f"{hub_id}{'/' + config if config else ''}[{split}]"
    records = [(f"{where} row {i}", r) for i, r in enumerate(ds.to_list())]
    if not records:
        raise DataError(f"{where} is empty")
    return records


def split_records(cfg, split: str) -> list[tuple[str, dict]]:
    """The `split` ("train" or "test") records of a mapped task: its local file if set, else
    its hub dataset, capped at max_<split>_examples."""
    limit = cfg[f"max_{split}_examples"]
    if cfg[f"{split}_file"]:
        return read_records(cfg[f"{split}_file"], limit)
    if cfg.hub_id:
        return load_hub_split(cfg.hub_id, cfg.hub_config, cfg[f"{split}_split"], cfg.revision,
                              limit)
    raise DataError(f"task {cfg.name} has neither {split}_file nor hub_id for its {split} split")


def _field(record: dict, name: str, where: str):
    if name not in record:
        raise DataError(f"{where}: no field {name!r}; fields found: {sorted(record)}")
    return record[name]


def _render(template: str, context: dict, where: str, what: str) -> str:
    try:
        return _JINJA.from_string(template).render(**context)
    except TemplateError as e:
        raise DataError(f"{where}: task.{what} failed on this record ({e}); fields found: "
                        f"{sorted(k for k in context if k not in ('prompt', 'response', 'answer'))}"
                        ) from None


def to_example(record: dict, cfg, where: str) -> dict:
    """One raw record as {"prompt", "response", "answer"?} through the task's field mapping
    and templates. Templates see the record's own fields, plus `prompt`, `response` and `answer`
    for the fields mapped to them. The answer, when the task has one, is what the in-domain
    test scores; it comes from answer_field, or from answer_pattern applied to the response."""
    context = dict(record)
    for alias in ("prompt", "response", "answer"):
        if cfg[f"{alias}_field"]:
            context[alias] = _field(record, cfg[f"{alias}_field"], where)
    prompt = _render(cfg.prompt_template, context, where, "prompt_template")
    if cfg.response_template:
        response = _render(cfg.response_template, context, where, "response_template")
    elif cfg.response_field:
        response = str(context["response"])
    else:
        raise DataError(f"task {cfg.name} needs response_field or response_template")
    example = {"prompt": prompt.strip(), "response": response.strip()}
    for key in ("prompt", "response"):
        if not example[key]:
            raise DataError(f"{where}: the rendered {key} is empty")
    if cfg.answer_field:
        example["answer"] = str(context["answer"]).strip()
    elif cfg.answer_pattern:
        found = re.search(cfg.answer_pattern, example["response"], flags=re.MULTILINE)
        if not found:
            raise DataError(f"{where}: task.answer_pattern {cfg.answer_pattern!r} finds no "
                            f"answer in the response")
        example["answer"] = found.group(1).strip()
    return example


def prepared_test_key(cfg) -> str:
    """A hash of everything that shapes the prepared test file, local test files' bytes
    included (an edited file gets a new prepared file, and so new base scores)."""
    digest = hashlib.sha256(json.dumps({k: cfg[k] for k in _TEST_KEYS}, sort_keys=True,
                                       default=str).encode())
    if cfg.test_file:
        for path in _paths(str(cfg.test_file)):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_test(cfg) -> Path:
    """The task's test split as a JSONL file in the chat schema, written once per content key
    (a file lock makes concurrent jobs write it once; the file appears whole)."""
    path = Path(cfg.prepared_dir) / cfg.name / f"test_{prepared_test_key(cfg)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            write_jsonl(path, [to_example(r, cfg, w) for w, r in split_records(cfg, "test")])
    return path


@dataclass
class Task:
    """What a task config prepares: its training dialogues and its in-domain test (the
    `benchmark:` spec, its `file` pointing at the test split)."""

    train: list[Dialogue]
    benchmark: dict


def load_task(cfg) -> Task:
    """The task's training dialogues and its test; a mapped task's test split is prepared as a
    file first (`prepare_test`)."""
    benchmark = OmegaConf.to_container(cfg.benchmark, resolve=True)
    if not is_mapped(cfg):
        records = read_jsonl(cfg.train_file)
        if cfg.max_train_examples:
            records = records[: cfg.max_train_examples]
        return Task([to_dialogue(r) for r in records], benchmark)
    dialogues = [to_dialogue(to_example(r, cfg, w)) for w, r in split_records(cfg, "train")]
    return Task(dialogues, benchmark | {"file": str(prepare_test(cfg))})
