"""The config's types and ranges: one dataclass per config group, registered with Hydra as the
schema every YAML of that group extends (`defaults: [/schema/<group>@_here_]`).

Hydra checks the types when it composes, so `train.learning_rate=abc` or an unknown key fails
before anything runs, naming the key. The ranges (`check`) are checked right after, before any
model is loaded: each field's limits are written beside it here, once. Values and the comments
that explain them live in the YAML files; the defaults here are only for keys a YAML may leave
out (a benchmark's options).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError


def limits(default=MISSING, *, min=None, max=None, above=None, choices=None, regex=False):
    """A field with its accepted values: `min`/`max` inclusive, `above` exclusive, `choices`,
    or `regex` (a valid regular expression). A number is also always finite, and an integer
    without a `max` at most INT_MAX."""
    return field(default=default, metadata={"min": min, "max": max, "above": above,
                                            "choices": choices, "regex": regex})


# Counts and sizes end up in C integers (torch, tokenizers, numpy): beyond this they overflow.
INT_MAX = 2**31 - 1
# What numpy, lm-eval and torch's generators all accept as a seed.
SEED_MAX = 2**32 - 1
# A run's seed; the seeds above it are the held-out streams' (generation.HELD_OUT_BASE), so
# no training seed draws a held-out set.
TRAINING_SEED_MAX = 2**31 - 1
# Ratios that multiply a count of examples (auxiliary dialogues per task example, dialogues
# generated per dialogue kept): far beyond any experiment, and nowhere near an overflow.
RATIO_MAX = 1000.0


WORLDS = ("toy", "real")


@dataclass
class GgufSchema:
    """A GGUF file shipped inside an installed Python package (sasft/model.py converts it)."""

    package: str = MISSING   # the importable package that holds the file
    file: str = MISSING      # the file's name inside the package
    install: str = MISSING   # the command that installs what is missing (said in the error)
    cache_dir: str = MISSING  # the converted checkpoint goes under <cache_dir>/models/


@dataclass
class ModelSchema:
    name: str = MISSING
    world: str = limits(choices=WORLDS)
    hub_id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[str] = None
    dtype: str = limits(choices=("float32", "bfloat16", "float16"))
    attn_implementation: str = limits(choices=("sdpa", "eager", "flash_attention_2",
                                               "flash_attention_3"))
    gradient_checkpointing: bool = MISSING
    trust_remote_code: bool = MISSING
    # A model the project builds itself (the toy models): the module that builds a missing
    # checkpoint at `path` and describes it until then, and its spec (sasft/toy/build.py).
    builder: Optional[str] = None
    toy: Optional[Any] = None
    # The transformers class that loads the tokenizer: the toy models' character tokenizer is
    # PreTrainedTokenizerFast whatever the architecture (AutoTokenizer would re-map it by model
    # type: qwen2 -> Qwen2Tokenizer, losing the spaces).
    tokenizer_class: str = limits("AutoTokenizer", choices=("AutoTokenizer", "PreTrainedTokenizerFast"))
    # How the base model opens every answer, where it has one house style: the drift analysis
    # then counts an answer without it as style leakage (else a length proxy; sasft/analyze.py).
    style_prefix: Optional[str] = None
    gguf: Optional[GgufSchema] = None  # a GGUF file in an installed package (sasft/model.py)


@dataclass
class BenchmarkSchema:
    """One benchmark: an lm-eval registry task, or a local JSONL file (sasft/evaluate.py)."""

    lm_eval_task: Optional[str] = None
    # Where a task the config ships is defined: its folder of lm-eval YAMLs (registered beside
    # lm-eval's own) and the data it reads; their bytes key the cached base scores.
    lm_eval_include: list[str] = field(default_factory=list)
    file: Optional[str] = None
    output_type: str = limits("generate_until", choices=("generate_until", "multiple_choice"))
    target: str = "response"
    metric: Optional[str] = None
    answer_regex: Optional[str] = limits(None, regex=True)
    group_select: int = -1
    regexes_to_ignore: list[str] = field(default_factory=list)
    ignore_case: bool = False
    num_fewshot: Optional[int] = limits(None, min=0)
    max_gen_toks: int = limits(64, min=1)
    # The score of guessing, where the test has one (a yes/no task: 0.5); multiple choice is
    # computed from its choices. Runs not clearly above it "did not learn the task".
    chance: Optional[float] = limits(None, min=0.0, max=1.0)


@dataclass
class TaskSchema:
    name: str = MISSING
    train_file: Optional[str] = None
    max_train_examples: Optional[int] = limits(None, min=1)
    benchmark: BenchmarkSchema = field(default_factory=BenchmarkSchema)
    # A task in another schema, mapped field by field (sasft/task.py); unset for the toy tasks.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    revision: Optional[str] = None
    train_split: Optional[str] = None
    test_split: Optional[str] = None
    test_file: Optional[str] = None
    prompt_field: Optional[str] = None
    response_field: Optional[str] = None
    answer_field: Optional[str] = None
    answer_pattern: Optional[str] = limits(None, regex=True)
    prompt_template: Optional[str] = None
    response_template: Optional[str] = None
    max_test_examples: Optional[int] = limits(None, min=1)
    prepared_dir: Optional[str] = None


@dataclass
class MethodSchema:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class MixingSchema(MethodSchema):
    mix_ratio: float = limits(min=0.0, max=RATIO_MAX)


@dataclass
class FreezeSchema(MethodSchema):
    frozen_layers: Optional[int] = limits(None, min=0)
    trainable_layers: Optional[int] = limits(None, min=0)
    frozen_fraction: Optional[float] = limits(None, min=0.0, max=1.0)
    freeze_embeddings: bool = True


@dataclass
class SdftSchema(MethodSchema):
    template: str = MISSING
    max_new_tokens: int = limits(min=1)
    batch_size: int = limits(min=1)


@dataclass
class PenaltySchema(MethodSchema):
    # The loss term is strength times a sum over every weight: 1e6 already swamps the task
    # loss; far larger ones overflow it to inf.
    strength: float = limits(min=0.0, max=1e6)


@dataclass
class EwcSchema(PenaltySchema):
    fisher_dialogues: int = limits(min=1)


@dataclass
class ExternalMixSchema(MixingSchema):
    corpus_file: Optional[str] = None
    corpus_hub_id: Optional[str] = None
    corpus_hub_config: Optional[str] = None
    corpus_split: str = "train"
    corpus_revision: Optional[str] = None


@dataclass
class PackagedCorpusSchema(MixingSchema):
    """External mixing from a corpus a Python package ships (sasft/corpora.py). A schema of its
    own, not a field of ExternalMixSchema: a new field would rename every ext_mix run."""
    corpus_loader: str = MISSING  # "module:function"


SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
              "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class TrainSchema:
    world: str = limits(choices=WORLDS)
    epochs: int = limits(min=1)
    learning_rate: float = limits(above=0.0, max=1.0)  # beyond 1 every optimizer diverges
    lr_scheduler_type: str = limits(choices=SCHEDULERS)
    warmup_ratio: float = limits(min=0.0, max=1.0)  # a share of all optimizer steps
    weight_decay: float = limits(min=0.0, max=1.0)
    batch_size: int = limits(min=1)
    gradient_accumulation_steps: int = limits(min=1)
    max_grad_norm: float = limits(above=0.0)
    max_seq_len: int = limits(min=8)  # a chat template's own tokens need room
    group_by_length: bool = MISSING
    packing: bool = MISSING
    logging_steps: int = limits(min=1)
    bf16: bool = MISSING
    labelled_logits_only: bool = MISSING
    use_liger_kernel: bool = MISSING
    save_steps: Optional[int] = limits(None, min=1)
    save_model: bool = MISSING
    eval_every_steps: int = limits(min=0)


@dataclass
class PeftSchema:
    name: str = limits(choices=("full", "lora"))
    r: Optional[int] = limits(None, min=1)
    lora_alpha: Optional[float] = limits(None, above=0.0, max=1e6)  # scales weights by alpha/r
    lora_dropout: Optional[float] = limits(None, min=0.0, max=1.0)
    target_modules: Optional[Any] = None  # "all-linear" or a list of module names
    bias: Optional[str] = limits(None, choices=("none", "all", "lora_only"))
    use_rslora: Optional[bool] = None


@dataclass
class EvalSchema:
    world: str = limits(choices=WORLDS)
    batch_size: int = limits(min=1)
    max_batch_size: int = limits(min=1)
    limit: Optional[int] = limits(None, min=1)
    seed: int = limits(min=0, max=SEED_MAX)
    # {name: benchmark}, each checked against BenchmarkSchema by `check`. Untyped here so that a
    # benchmark can be added from the command line: +eval.general.hellaswag='{lm_eval_task: ...}'.
    general: dict[str, Any] = field(default_factory=dict)
    # KL(base || current) at each periodic evaluation (sasft/kl.py): held-out self-dialogues,
    # and questions per general benchmark; 0 measures none.
    kl_dialogues: int = limits(0, min=0)
    kl_prompts: int = limits(0, min=0)
    examples: int = limits(5, min=0)  # forgotten items kept per general benchmark
    # At each periodic evaluation, the general benchmarks on their first N items too (of each
    # task of a group; the base's once before training): forgetting at equal learning, in the
    # report. 0 scores none.
    periodic_general_items: int = limits(0, min=0)
    # Greedy generation drops each row from the batch once it has ended (sasft/eval_lm.py):
    # the same replies, less compute. false: lm-eval's HFLM as it is.
    drop_finished: bool = True


@dataclass
class GenerationSchema:
    world: str = limits(choices=WORLDS)
    backend: str = limits(choices=("hf", "vllm"))
    num_turns: int = limits(min=1)
    temperature: float = limits(min=0.0, max=100.0)  # 0: greedy
    top_p: float = limits(above=0.0, max=1.0)  # 0 would keep no token at all
    top_k: int = limits(min=0)  # 0: no top-k cut
    max_new_tokens: int = limits(min=1)
    batch_size: int = limits(min=1)
    oversample: float = limits(min=1.0, max=RATIO_MAX)  # filters only ever drop dialogues
    truncated: str = limits(choices=("drop", "cut"))
    min_yield: float = limits(above=0.0, max=1.0)  # 0 would never stop a hopeless generation
    per_seed: bool = MISSING
    block: Optional[int] = limits(None, min=1)  # dialogues per block of a seed's stream
    sample_size: int = limits(min=0)
    vllm_gpu_memory_utilization: float = limits(above=0.0, max=1.0)
    # The hf backend drops each dialogue from the batch once its turn has ended
    # (sasft/decode.py): the same distribution, other draws. false: transformers' generate.
    drop_finished: bool = True


@dataclass
class WandbSchema:
    enabled: bool = MISSING
    project: str = MISSING
    entity: Optional[str] = None
    mode: str = limits(choices=("online", "offline", "disabled"))
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None


@dataclass
class RootSchema:
    """The top level of conf/config.yaml; each group is checked by its own schema."""

    # Typed by their own schemas (GROUPS), which their YAML files extend.
    model: Any = MISSING
    task: Any = MISSING
    method: Any = MISSING
    train: Any = MISSING
    peft: Any = MISSING
    eval: Any = MISSING
    generation: Any = MISSING
    wandb: Any = MISSING
    mix_ratio: float = limits(min=0.0, max=RATIO_MAX)
    seed: int = limits(min=0, max=TRAINING_SEED_MAX)
    cache_dir: str = MISSING
    rerun: bool = MISSING
    owner_wait_s: Optional[float] = limits(None, min=0.0, max=1e9)  # 30 years
    allow_world_mismatch: bool = MISSING
    sweep_name: str = MISSING


GROUPS = {"model": ModelSchema, "task": TaskSchema, "train": TrainSchema, "peft": PeftSchema,
          "eval": EvalSchema, "generation": GenerationSchema, "wandb": WandbSchema,
          "method/task_only": MethodSchema, "method/freeze": FreezeSchema,
          "method/mixing": MixingSchema, "method/ext_mix": ExternalMixSchema,
          "method/ext_mix_package": PackagedCorpusSchema,
          "method/sdft": SdftSchema, "method/l2_base": PenaltySchema, "method/ewc": EwcSchema}


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="schema", node=RootSchema)
    for group, schema in GROUPS.items():
        path, _, name = f"schema/{group}".rpartition("/") if "/" in group else ("schema", "", group)
        store.store(group=path, name=name, node=schema)


def benchmark_spec(spec) -> dict:
    """A benchmark spec with every option (the schema's defaults for those not given), as plain
    Python: what sasft/evaluate.py reads."""
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(BenchmarkSchema), spec),
                                  resolve=True)


# --- ranges ---------------------------------------------------------------------------------


def _allowed(meta: dict, is_int: bool) -> str:
    """The accepted range in words: " in [0, 1000.0]", " >= 1", " in (0.0, 1.0]", or ""."""
    low = meta.get("min") if meta.get("min") is not None else meta.get("above")
    high = meta.get("max") if meta.get("max") is not None else (INT_MAX if is_int else None)
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if meta.get('min') is not None else '>'} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'[' if meta.get('min') is not None else '('}{low}, {high}]"


def _problem(value, meta: dict) -> str | None:
    """What is wrong with `value` under a field's limits, or None."""
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}"
    if meta.get("regex"):
        try:
            re.compile(value)
        except re.error as e:
            return f"must be a valid regular expression ({e})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        is_int = isinstance(value, int)
        high = meta.get("max") if meta.get("max") is not None else (INT_MAX if is_int else None)
        if (not is_int and not math.isfinite(value)
                or meta.get("min") is not None and value < meta["min"]
                or meta.get("above") is not None and value <= meta["above"]
                or high is not None and value > high):
            kind = "an integer" if is_int else "a finite number"
            return f"must be {kind}{_allowed(meta, is_int)}"
    return None


def _walk(node, schema, prefix: str):
    """(dotted key, value, limits) of every field of `node` under `schema`, nested ones too."""
    types = get_type_hints(schema)
    for f in fields(schema):
        value = node.get(f.name) if isinstance(node, (dict, DictConfig)) else None
        yield f"{prefix}{f.name}", value, f.metadata
        if is_dataclass(types[f.name]) and value is not None:
            yield from _walk(value, types[f.name], f"{prefix}{f.name}.")


def check(cfg: DictConfig) -> None:
    """Every field within its limits, and no mandatory value left unset; else a ConfigError
    naming the field, the value and what it accepts."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"{sorted(missing)[0]} is not set (it has no default: give it in its "
                          f"YAML file or on the command line)")
    # The top level first: `mix_ratio=nan` is reported as the key the user typed, not as the
    # method.mix_ratio it flows into.
    for f in fields(RootSchema):
        problem = _problem(cfg[f.name], f.metadata)  # a group's node: checked below
        if problem:
            raise ConfigError(f"{f.name} {problem}, got {cfg[f.name]!r}")
    for group in ("model", "task", "train", "peft", "eval", "generation", "wandb", "method"):
        node = cfg[group]
        schema = OmegaConf.get_type(node)
        if not is_dataclass(schema):
            raise ConfigError(f"{group}: its YAML does not extend /schema/{group} (sasft/schema.py)")
        checks = list(_walk(node, schema, f"{group}."))
        if group == "eval":
            for name, spec in node.general.items():
                try:
                    spec = benchmark_spec(spec)
                except OmegaConfBaseException as e:
                    raise ConfigError(f"eval.general.{name}.{e.key}: {e.msg.splitlines()[0]}") from None
                checks += _walk(spec, BenchmarkSchema, f"eval.general.{name}.")
        for key, value, meta in checks:
            problem = _problem(value, meta)
            if problem:
                raise ConfigError(f"{key} {problem}, got {value!r}")
