"""The methods: task-only SFT, layer freezing, external-data mixing and SA-SFT. Each changes
only what it must, through the hooks the pipeline calls: the data mixed in with the task
(`auxiliary`, at `mix_ratio`), or the set of trainable parameters (`select_trainable`).
Optimizer, schedule, epochs and batch size are never touched. Built from
`conf/method/<name>.yaml` by `hydra.utils.instantiate`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .data import DataError, Dialogue, check_record, read_records, to_dialogue
from .generation import cached_self_dialogues


@dataclass
class MixContext:
    """What a method may use to make its auxiliary data."""

    model: object
    tokenizer: object
    generation: object  # conf/generation
    fingerprint: str
    cache_dir: Path
    seed: int


class Method:
    name = "method"
    mix_ratio: float | None = None  # auxiliary dialogues per task example, for methods that mix

    @property
    def mixes_data(self) -> bool:
        return self.mix_ratio is not None

    def check(self, model_config) -> None:
        """Fail on bad settings before any weights are loaded or data generated."""

    def auxiliary(self, count: int, ctx: MixContext) -> tuple[list[Dialogue], dict]:
        """`count` dialogues to mix with the task data, and statistics about them."""
        return [], {}

    def select_trainable(self, model) -> None:
        """Mark what trains; by default everything does."""


class TaskOnly(Method):
    def __init__(self, name: str = "task_only"):
        self.name = name


class Freeze(Method):
    """Embeddings and the lowest decoder layers frozen; the rest, and the output head, train.
    How many layers freeze is set by exactly one of `frozen_layers`, `trainable_layers` (counts
    fitted to one model) or `frozen_fraction` (one setting for models of different depths:
    0.5 freezes 16 of Llama-3.1-8B's 32 layers and 14 of Qwen2.5-7B's 28)."""

    def __init__(self, name: str = "freeze", frozen_layers: int | None = None,
                 trainable_layers: int | None = None, freeze_embeddings: bool = True,
                 frozen_fraction: float | None = None):
        if sum(x is not None for x in (frozen_layers, trainable_layers, frozen_fraction)) != 1:
            raise ConfigError("freeze needs exactly one of method.frozen_layers, "
                              "method.trainable_layers, method.frozen_fraction")
        self.name = name
        self.frozen_layers, self.trainable_layers = frozen_layers, trainable_layers
        self.frozen_fraction = frozen_fraction
        self.freeze_embeddings = freeze_embeddings

    def n_frozen(self, n_layers: int) -> int:
        if self.frozen_fraction is not None:
            return int(self.frozen_fraction * n_layers)
        if self.frozen_layers is not None:
            if self.frozen_layers > n_layers:
                raise ConfigError(f"method.frozen_layers={self.frozen_layers}, but the model "
                                  f"has only {n_layers} layers")
            return self.frozen_layers
        if self.trainable_layers > n_layers:
            raise ConfigError(f"method.trainable_layers={self.trainable_layers}, but the model "
                              f"has only {n_layers} layers")
        return n_layers - self.trainable_layers

    def check(self, model_config) -> None:
        self.n_frozen(model_config.num_hidden_layers)

    def select_trainable(self, model) -> None:
        from .model import decoder_layers

        layers = decoder_layers(model)
        for layer in list(layers)[: self.n_frozen(len(layers))]:
            layer.requires_grad_(False)
        if self.freeze_embeddings:
            model.get_input_embeddings().requires_grad_(False)


class ExternalMix(Method):
    """Task data plus dialogues drawn from an external chat corpus (UltraChat, or the toy
    world's stand-in): data the model never saw, in a style not its own. The corpus is a local
    JSONL or Parquet file (or a glob of shards) in the chat schema, or a hub dataset
    (`corpus_hub_id`, e.g. HuggingFaceH4/ultrachat_200k, split train_sft, whose rows hold a
    `messages` list); a local file wins when both are set."""

    def __init__(self, mix_ratio: float, corpus_file: str | None = None,
                 corpus_hub_id: str | None = None, corpus_hub_config: str | None = None,
                 corpus_split: str = "train", corpus_revision: str | None = None,
                 name: str = "ext_mix"):
        if not corpus_file and not corpus_hub_id:
            raise ConfigError("ext_mix needs method.corpus_file or method.corpus_hub_id")
        self.name, self.mix_ratio, self.corpus_file = name, mix_ratio, corpus_file
        self.hub = None if corpus_file else (corpus_hub_id, corpus_hub_config, corpus_split,
                                             corpus_revision)
        self._corpus = None

    @property
    def source(self) -> str:
        if self.hub is None:
            return str(self.corpus_file)
        hub_id, config, split, revision = self.hub
        name = f"{hub_id}/{config}" if config else hub_id
        return f"{name}[{split}]@{revision}" if revision else f"{name}[{split}]"

    def _load(self):
        """The corpus as a list of records (local) or a datasets.Dataset (hub: memory-mapped
        Arrow, so 200k dialogues cost no RAM until picked)."""
        if self.hub is None:
            records = read_records(self.corpus_file)
            for where, record in records:
                check_record(record, where)  # a bad record fails here, named by file and line
            return [record for _, record in records]
        import datasets

        hub_id, config, split, revision = self.hub
        corpus = datasets.load_dataset(hub_id, config, split=split, revision=revision)
        if "messages" not in corpus.column_names and not {"prompt", "response"} <= set(
                corpus.column_names):
            raise DataError(f"{self.source} has no 'messages' column (nor 'prompt' and "
                            f"'response'); columns: {corpus.column_names}")
        return corpus

    def check(self, model_config) -> None:
        self._corpus = self._load()

    def auxiliary(self, count: int, ctx: MixContext) -> tuple[list[Dialogue], dict]:
        corpus = self._corpus if self._corpus is not None else self._load()
        if count > len(corpus):
            raise ConfigError(f"mix_ratio asks for {count} external dialogues, but "
                              f"{self.source} holds only {len(corpus)}")
        picked = random.Random(ctx.seed).sample(range(len(corpus)), count)
        dialogues = []
        for i in picked:
            record = corpus[i]
            check_record(record, f"{self.source}: record {i}")
            dialogues.append(to_dialogue(record))
        return dialogues, {"corpus": self.source}


class SelfDialogueMix(Method):
    """SA-SFT: task data plus the base model's own self-dialogues, generated before training."""

    def __init__(self, mix_ratio: float, name: str = "sasft"):
        self.name, self.mix_ratio = name, mix_ratio

    def auxiliary(self, count: int, ctx: MixContext) -> tuple[list[Dialogue], dict]:
        return cached_self_dialogues(ctx.model, ctx.tokenizer, count, ctx.generation, ctx.seed,
                                     ctx.fingerprint, ctx.cache_dir)
