"""The four methods. Each changes only what it must: the data mixed in with the task, or the
set of trainable parameters. Optimizer, schedule, epochs and batch size are never touched.

Built from `conf/method/<name>.yaml` by `hydra.utils.instantiate`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .data import Dialogue, read_jsonl, to_dialogue
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
    mixes_data = False  # whether mix_ratio means anything for this method

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
    """Embeddings and the lowest decoder layers frozen; the rest, and the output head, train."""

    def __init__(self, name: str = "freeze", frozen_layers: int | None = None,
                 trainable_layers: int | None = None, freeze_embeddings: bool = True):
        if (frozen_layers is None) == (trainable_layers is None):
            raise ConfigError("freeze needs exactly one of method.frozen_layers, "
                              "method.trainable_layers")
        self.name = name
        self.frozen_layers, self.trainable_layers = frozen_layers, trainable_layers
        self.freeze_embeddings = freeze_embeddings

    def n_frozen(self, n_layers: int) -> int:
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
    world's stand-in): data the model never saw, in a style not its own."""

    mixes_data = True

    def __init__(self, corpus_file: str, name: str = "ext_mix"):
        self.name, self.corpus_file = name, corpus_file
        self._corpus: list[dict] | None = None

    def check(self, model_config) -> None:
        self._corpus = read_jsonl(self.corpus_file)  # names file and line on a bad record

    def auxiliary(self, count: int, ctx: MixContext) -> tuple[list[Dialogue], dict]:
        corpus = self._corpus if self._corpus is not None else read_jsonl(self.corpus_file)
        if count > len(corpus):
            raise ConfigError(f"mix_ratio asks for {count} external dialogues, but "
                              f"{self.corpus_file} holds only {len(corpus)}")
        picked = random.Random(ctx.seed).sample(corpus, count)
        return [to_dialogue(r) for r in picked], {"corpus": str(self.corpus_file)}


class SelfDialogueMix(Method):
    """SA-SFT: task data plus the base model's own self-dialogues, generated before training."""

    mixes_data = True

    def __init__(self, name: str = "sasft"):
        self.name = name

    def auxiliary(self, count: int, ctx: MixContext) -> tuple[list[Dialogue], dict]:
        return cached_self_dialogues(ctx.model, ctx.tokenizer, count, ctx.generation, ctx.seed,
                                     ctx.fingerprint, ctx.cache_dir)
