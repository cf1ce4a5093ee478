"""Fine-tuning tasks: the training dialogues and the in-domain test, from `conf/task/<name>.yaml`.

A task is either data already in sasft's chat schema (the toy tasks: `train_file` and
`benchmark.file`), or any other schema mapped field by field onto a prompt and a response
(every real task). The keys given decide which: any key of the mapping (MAPPING_KEYS) makes a
mapped task, whose prompt and response default to the records' own `prompt` and `response`.
The keys are explained once, in docs/real_models.md ("Tasks"), and typed in sasft/schema.py;
`check_task` refuses a YAML whose keys do not make one of the two forms. A mapped task's test
split is rendered by the same templates as its training data and prepared once as a JSONL file
in the chat schema (`prepare_test`), so the in-domain test is an ordinary local benchmark
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
from .errors import ConfigError

# Sandboxed (templates come from configs) and strict (a misspelt field is an error, not "").
_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)

# Every key that changes the prepared test file; its hash names the file.
_TEST_KEYS = ("hub_id", "hub_config", "revision", "test_split", "test_file", "prompt_field",
              "response_field", "answer_field", "answer_pattern", "prompt_template",
              "response_template", "max_test_examples")


# The keys that map another schema: any of them makes a mapped task (form 2).
MAPPING_KEYS = ("hub_id", "test_file", "prompt_field", "response_field", "answer_field",
                "answer_pattern", "prompt_template", "response_template")
# What a mapped task renders when its YAML gives no template: the records' own fields.
DEFAULT_PROMPT, DEFAULT_RESPONSE = "{{ prompt }}", "{{ response }}"
# What a prepared test record holds, so what a mapped task's benchmark.target can name.
_PREPARED_FIELDS = ("prompt", "response", "answer")


def is_mapped(cfg) -> bool:
    """Whether the task maps another schema (form 2) rather than using sasft's own (form 1)."""
    return any(cfg[k] is not None for k in MAPPING_KEYS)


def check_task(cfg) -> None:
    """The task YAML as a whole, before anything loads: its keys make one of the two forms, each
    key it sets is one that form reads, and its local files exist."""
    def ignored(key: str, why: str) -> ConfigError:
        return ConfigError(f"task.{key} is set, but task {cfg.name} ignores it: {why}")

    if not cfg.hub_id:
        for key in ("hub_config", "revision", "train_split", "test_split"):
            if cfg[key] is not None:
                raise ignored(key, "it applies to a hub dataset and task.hub_id is not set")
    if not is_mapped(cfg):
        if cfg.max_test_examples is not None:
            raise ignored("max_test_examples", "its test is benchmark.file, used whole (the "
                          "keys of a mapped task: docs/real_models.md, Tasks)")
        if not cfg.train_file:
            raise ConfigError(f"task {cfg.name} has no training data: set task.train_file (in "
                              f"sasft's chat schema), or a source to map ({', '.join(MAPPING_KEYS)})")
        if not cfg.benchmark.file and not cfg.benchmark.lm_eval_task:
            raise ConfigError(f"task {cfg.name} has no test: set task.benchmark.file, or "
                              "task.test_file to prepare one from")
        matching_paths(str(cfg.train_file))
        return
    if cfg.benchmark.file:
        raise ignored("benchmark.file", "a mapped task's test is prepared from task.test_file "
                      "or the hub's test_split; give the file as task.test_file")
    for split in ("train", "test"):
        if cfg[f"{split}_file"]:
            matching_paths(str(cfg[f"{split}_file"]))
        elif not cfg.hub_id:
            raise ConfigError(f"task {cfg.name} has no {split} data: set task.{split}_file (or "
                              f"task.hub_id and task.{split}_split)")
        elif not cfg[f"{split}_split"]:
            raise ConfigError(f"task.{split}_split is not set: which split of {cfg.hub_id} "
                              f"task {cfg.name} {'trains on' if split == 'train' else 'tests on'}")
    target = cfg.benchmark.target
    if target not in _PREPARED_FIELDS:
        raise ConfigError(f"task.benchmark.target must be one of {', '.join(_PREPARED_FIELDS[1:])} "
                          f"for a mapped task (its test file holds {', '.join(_PREPARED_FIELDS)}), "
                          f"got {target!r}")
    if target == "answer" and not (cfg.answer_field or cfg.answer_pattern):
        raise ConfigError(f"task.benchmark.target is answer, but task {cfg.name} has no answer: "
                          "set task.answer_field or task.answer_pattern, or target: response")


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
    unset = "prompt_template (unset, so {})"
    prompt = _render(cfg.prompt_template or DEFAULT_PROMPT, context, where,
                     "prompt_template" if cfg.prompt_template else unset.format(DEFAULT_PROMPT))
    if cfg.response_template or not cfg.response_field:
        response = _render(cfg.response_template or DEFAULT_RESPONSE, context, where,
                           "response_template" if cfg.response_template
                           else unset.format(DEFAULT_RESPONSE))
    else:
        response = str(context["response"])
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


def prepare_test(cfg, prepared_dir: str | Path | None = None) -> Path:
    """The task's test split as a JSONL file in the chat schema, written once per content key
    (a file lock makes concurrent jobs write it once; the file appears whole), under
    task.prepared_dir, else `prepared_dir`."""
    where = cfg.prepared_dir or prepared_dir
    if where is None:
        raise ConfigError(f"task.prepared_dir is not set: where task {cfg.name}'s test split is "
                          "prepared (e.g. ${cache_dir}/tasks)")
    path = Path(where) / cfg.name / f"test_{prepared_test_key(cfg)}.jsonl"
    make = lambda: [to_example(r, cfg, w) for w, r in split_records(cfg, "test")]  # noqa: E731
    cache.once(path, make, write_jsonl, read=lambda p: None)
    return path


@dataclass
class Task:
    """What a task config prepares: its training dialogues and its in-domain test (the
    `benchmark:` spec, its `file` pointing at the test split)."""

    train: list[Dialogue]
    benchmark: dict


def load_task(cfg, prepared_dir: str | Path | None = None) -> Task:
    """The task's training dialogues and its test; a mapped task's test split is prepared as a
    file first (`prepare_test`, under task.prepared_dir, else `prepared_dir`)."""
    benchmark = OmegaConf.to_container(cfg.benchmark, resolve=True)
    if not is_mapped(cfg):
        records = read_jsonl(cfg.train_file)
        if cfg.max_train_examples:
            records = records[: cfg.max_train_examples]
        return Task([to_dialogue(r) for r in records], benchmark)
    dialogues = [to_dialogue(to_example(r, cfg, w)) for w, r in split_records(cfg, "train")]
    return Task(dialogues, benchmark | {"file": str(prepare_test(cfg, prepared_dir))})
