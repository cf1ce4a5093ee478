"""Fine-tuning tasks: the training dialogues and the in-domain test, from `conf/task/<name>.yaml`.

A task is either data already in sasft's chat schema (the toy tasks: `train_file` and
`benchmark.file`), or any other schema mapped field by field onto a prompt and a response
(every real task, marked by `prompt_template`); the keys are explained once, in
docs/real_models.md ("Tasks"), and typed in sasft/schema.py. A mapped task's test split is
rendered by the same templates as its training data and prepared once as a JSONL file in the
chat schema (`prepare_test`), so the in-domain test is an ordinary local benchmark
(sasft/evaluate.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from omegaconf import OmegaConf

from . import cache
from .data import DataError, Dialogue, matching_paths, read_jsonl, read_records, to_dialogue, write_jsonl

# Sandboxed (templates come from configs) and strict (a misspelt field is an error, not "").
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)

# Every key that changes the prepared test file; its hash names the file.
_TEST_KEYS = ("hub_id", "hub_config", "revision", "test_split", "test_file", "prompt_field",
              "response_field", "answer_field", "answer_pattern", "prompt_template",
              "response_template", "max_test_examples")


def is_mapped(cfg) -> bool:
    """Whether the task maps a foreign schema (form 2) rather than using sasft's own (form 1)."""
    return cfg.prompt_template is not None


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
        for path in matching_paths(str(cfg.test_file)):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_test(cfg) -> Path:
    """The task's test split as a JSONL file in the chat schema, written once per content key
    (a file lock makes concurrent jobs write it once; the file appears whole)."""
    path = Path(cfg.prepared_dir) / cfg.name / f"test_{prepared_test_key(cfg)}.jsonl"
    make = lambda: [to_example(r, cfg, w) for w, r in split_records(cfg, "test")]  # noqa: E731
    cache.once(path, make, write_jsonl, read=lambda p: None)
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
