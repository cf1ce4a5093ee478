"""The methods: task-only SFT, layer freezing, external-data mixing, replay, self-distillation
(sdft), L2 to the base weights, EWC and SA-SFT. Each changes only what it must, through the
hooks the pipeline calls, in this order:
  check            settings, before any weights load
  rewrite          the task's training dialogues (sdft)
  auxiliary        dialogues mixed in with the task at `mix_ratio` (ext_mix, replay, sasft)
  select_trainable the trainable parameters (freeze)
  penalty          a term added to the training loss (l2_base, ewc; sasft/penalty.py)
Optimizer, schedule, epochs and batch size are never touched. Built from
`conf/method/<name>.yaml` by `hydra.utils.instantiate`."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from . import cache, dist
from .corpora import load_corpus
from .errors import ConfigError
from .data import DataError, Dialogue, check_record, read_records, to_dialogue
from .generation import cached_self_dialogues, complete, held_out_seed
from .penalty import WeightPenalty, diagonal_fisher
from .schema import benchmark_spec


@dataclass
class MethodContext:
    """What a method may use to make its data or its penalty."""

    model: object
    tokenizer: object
    generation: object  # conf/generation
    fingerprint: str
    cache_dir: Path
    seed: int
    benchmark: dict | None = None  # the task's in-domain test spec: how its answers are scored
    max_seq_len: int = 2048


class Method:
    name = "method"
    mix_ratio: float | None = None  # auxiliary dialogues per task example, for methods that mix

    @property
    def mixes_data(self) -> bool:
        return self.mix_ratio is not None

    def check(self, model_config, peft: str = "full") -> None:
        """Fail on bad settings (`peft`: the conf/peft name, full or lora) before any weights are loaded
        or data generated."""

    def rewrite(self, task: list[Dialogue], ctx: MethodContext) -> tuple[list[Dialogue], dict]:
        """The task's training dialogues as this method trains on them; by default unchanged."""
        return task, {}

    def auxiliary(self, count: int, ctx: MethodContext) -> tuple[list[Dialogue], dict]:
        """`count` dialogues to mix with the task data, and statistics about them."""
        return [], {}

    def select_trainable(self, model) -> None:
        """Mark what trains; by default everything does."""

    def penalty(self, model, ctx: MethodContext):
        """A callable `model -> scalar tensor` added to the training loss, or None. Called
        once the trainable set (and any LoRA adapters) is final, before training starts."""
        return None


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

    def check(self, model_config, peft: str = "full") -> None:
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
    JSONL or Parquet file (or a glob of shards) in the chat schema; or one a Python package
    ships (`corpus_loader`, "module:function", sasft/corpora.py); or a hub dataset
    (`corpus_hub_id`, e.g. HuggingFaceH4/ultrachat_200k, split train_sft, whose rows hold a
    `messages` list). The first of them that is set wins."""

    def __init__(self, mix_ratio: float, corpus_file: str | None = None,
                 corpus_hub_id: str | None = None, corpus_hub_config: str | None = None,
                 corpus_split: str = "train", corpus_revision: str | None = None,
                 corpus_loader: str | None = None, name: str = "ext_mix"):
        if not corpus_file and not corpus_loader and not corpus_hub_id:
            raise ConfigError(f"{name} needs method.corpus_file, method.corpus_loader or "
                              "method.corpus_hub_id")
        self.name, self.mix_ratio, self.corpus_file = name, mix_ratio, corpus_file
        self.loader = None if corpus_file else corpus_loader
        self.hub = None if corpus_file or corpus_loader else (
            corpus_hub_id, corpus_hub_config, corpus_split, corpus_revision)
        self._corpus = None

    @property
    def source(self) -> str:
        if self.loader:
            return self.loader
        if self.hub is None:
            return str(self.corpus_file)
        hub_id, config, split, revision = self.hub
        name = f"{hub_id}/{config}" if config else hub_id
        return f"{name}[{split}]@{revision}" if revision else f"{name}[{split}]"

    def _load(self):
        """The corpus as a list of records (local) or a datasets.Dataset (hub: memory-mapped
        Arrow, so 200k dialogues cost no RAM until picked)."""
        if self.loader or self.hub is None:
            records = ([(f"{self.loader}: record {i}", r)
                        for i, r in enumerate(load_corpus(self.loader))] if self.loader
                       else read_records(self.corpus_file))
            for where, record in records:
                check_record(record, where)  # a bad record fails here, named by where it is
            return [record for _, record in records]
        import datasets

        hub_id, config, split, revision = self.hub
        corpus = datasets.load_dataset(hub_id, config, split=split, revision=revision)
        if "messages" not in corpus.column_names and not {"prompt", "response"} <= set(
                corpus.column_names):
            raise DataError(f"{self.source} has no 'messages' column (nor 'prompt' and "
                            f"'response'); columns: {corpus.column_names}")
        return corpus

    def check(self, model_config, peft: str = "full") -> None:
        self._corpus = self._load()

    def auxiliary(self, count: int, ctx: MethodContext) -> tuple[list[Dialogue], dict]:
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


class Replay(ExternalMix):
    """Task data plus the base model's own training data at mix_ratio: the oracle SA-SFT
    approximates without access to that data. The toy world has it (the toy models'
    pretraining dialogues); for a real model, a corpus of its training data is the user's to
    name (`corpus_file` or `corpus_hub_id`), as for ext_mix."""

    def __init__(self, mix_ratio: float, name: str = "replay", **corpus):
        super().__init__(mix_ratio, name=name, **corpus)


class SelfDialogueMix(Method):
    """SA-SFT: task data plus the base model's own self-dialogues, generated before training."""

    def __init__(self, mix_ratio: float, name: str = "sasft"):
        self.name, self.mix_ratio = name, mix_ratio

    def auxiliary(self, count: int, ctx: MethodContext) -> tuple[list[Dialogue], dict]:
        return cached_self_dialogues(ctx.model, ctx.tokenizer, count, ctx.generation, ctx.seed,
                                     ctx.fingerprint, ctx.cache_dir)


def final_answer(text: str, spec: dict) -> str:
    """What the task's test compares in `text`: the `answer_regex` match through lm-eval's own
    regex filter (the one sasft/evaluate.py gives the test; "" where nothing matches), else the
    stripped reply; then, as exact match does, `regexes_to_ignore` removed and case folded."""
    if spec["answer_regex"]:
        from lm_eval.filters.extraction import RegexFilter

        found = RegexFilter(spec["answer_regex"], spec["group_select"], fallback="")
        text = found.apply([[text]], [{}])[0][0]
    text = text.strip()
    for pattern in spec["regexes_to_ignore"]:
        text = re.sub(pattern, "", text)
    return text.lower() if spec["ignore_case"] else text


class SelfDistillation(Method):
    """sdft (sail-sg/sdft): the base model rewrites each task response in its own words, given
    the reference, and trains on the rewrites. A rewrite the task's own test would no longer
    score as the reference (`final_answer` differs), or one cut at `max_new_tokens`, falls back
    to the original. Tasks scored by overlap (ROUGE-L, chrF) have no answer to check: their
    rewrites are kept whenever complete. Rewrites are greedy and cached by model, template,
    length and the task data."""

    def __init__(self, template: str, max_new_tokens: int = 256, batch_size: int = 16,
                 name: str = "sdft"):
        if "{prompt}" not in template or "{response}" not in template:
            raise ConfigError("method.template must contain {prompt} and {response}")
        self.name, self.template = name, template
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def rewrite(self, task: list[Dialogue], ctx: MethodContext) -> tuple[list[Dialogue], dict]:
        spec = benchmark_spec(ctx.benchmark)
        checked = (spec["metric"] or "exact_match") == "exact_match"
        settings = {"template": self.template, "max_new_tokens": self.max_new_tokens}
        path = Path(ctx.cache_dir) / "rewrites" / f"{cache.key([ctx.fingerprint, settings, task])}.json"

        def make() -> dict:
            return {"rewrites": self._generate(task, ctx), "model": ctx.fingerprint, **settings}

        made, _ = cache.once(path, make, cache.publish_json, read=lambda p: json.loads(p.read_text()))
        out, kept, wrong = [], 0, 0
        for dialogue, text in zip(task, made["rewrites"]):
            reference = dialogue[-1]["content"]
            ok = text is not None and (not checked or (final_answer(text, spec) ==
                                                       final_answer(reference, spec)))
            wrong += text is not None and not ok
            kept += ok
            out.append(dialogue[:-1] + [{"role": "assistant", "content": text if ok else reference}])
        return out, {"rewritten": kept, "fell_back_wrong": wrong,
                     "fell_back_truncated": sum(t is None for t in made["rewrites"]),
                     "answers_checked": checked}

    def _generate(self, task: list[Dialogue], ctx: MethodContext) -> list[str | None]:
        greedy = OmegaConf.create({"temperature": 0.0, "top_p": 1.0, "top_k": 0,
                                   "max_new_tokens": self.max_new_tokens})
        prompts = [ctx.tokenizer.apply_chat_template(
            [*d[:-2], {"role": "user", "content": self.template.format(
                prompt=d[-2]["content"], response=d[-1]["content"])}],
            tokenize=False, add_generation_prompt=True) for d in task]
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            texts += complete(ctx.model, ctx.tokenizer, prompts[start:start + self.batch_size],
                              greedy)
        return texts


class L2Base(Method):
    """L2-SP: `strength * ||theta - theta0||^2` on the trainable parameters (sasft/penalty.py)."""

    def __init__(self, strength: float, name: str = "l2_base"):
        self.name, self.strength = name, strength

    def penalty(self, model, ctx: MethodContext):
        return WeightPenalty(model, self.strength)


class Ewc(Method):
    """EWC: L2-SP weighted by the base model's diagonal Fisher, estimated on `fisher_dialogues`
    of its own self-dialogues (generated with conf/generation, cached like sasft's)."""

    def __init__(self, strength: float, fisher_dialogues: int = 64, name: str = "ewc"):
        self.name, self.strength, self.fisher_dialogues = name, strength, fisher_dialogues

    def check(self, model_config, peft: str = "full") -> None:
        if peft == "lora":
            raise ConfigError(f"method=ewc with peft={peft}: EWC weighs the change of the base "
                              "weights by their Fisher information, and LoRA leaves those "
                              "frozen; use method=l2_base with LoRA, or peft=none")

    def penalty(self, model, ctx: MethodContext):
        dialogues, _ = dist.on_main(cached_self_dialogues, ctx.model, ctx.tokenizer,
                                    self.fisher_dialogues, ctx.generation, FISHER_SEED,
                                    ctx.fingerprint, ctx.cache_dir)
        fisher = diagonal_fisher(model, ctx.tokenizer, dialogues, ctx.max_seq_len)
        return WeightPenalty(model, self.strength, fisher)


FISHER_SEED = held_out_seed("fisher")  # a held-out stream: not the dialogues sasft mixes in
