"""Supervised fine-tuning with transformers' Trainer, identical for every method."""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (DataCollatorWithFlattening, Trainer, TrainerCallback,
                          TrainingArguments)
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.trainer_pt_utils import LengthGroupedSampler

from .errors import SasftError
from .data import collator, tokenize


class NonFiniteLossError(SasftError, RuntimeError):
    """The training loss became NaN or infinite; the run stops and records nothing."""


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """`group_by_length` batches in an order drawn from (seed, epoch) alone. The Trainer's own
    sampler draws it from the global RNG, which a run resumed from a checkpoint restores only
    after drawing the epoch's order: resumed inside any epoch but the first, it would train on
    other batches than an uninterrupted run of the same seed."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer before each epoch
        self.generator.manual_seed(self.seed + epoch)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token some row of the batch labels: the only logits a causal
    LM's loss reads."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)


class SFTTrainer(Trainer):
    """The Trainer, with five changes: it stops at once on a non-finite loss instead of
    training on garbage; its periodic evaluation is the in-domain benchmark through
    lm-eval (the paper's Figure 3) and the KL from the base (sasft/kl.py), logged like any
    metric: to the history and to trackers; a method's penalty, if any, is added to the loss
    (and logged as `penalty`); the LM head runs only where the loss reads its logits
    (`labelled_logits_only`); and its length-grouped batch order is seeded per epoch, so that
    a run resumed from a checkpoint trains on the same batches as an uninterrupted one."""

    def __init__(self, *args, periodic_eval=None, penalty=None, labelled_logits_only=False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.periodic_eval, self.penalty = periodic_eval, penalty
        self.labelled_logits_only = labelled_logits_only and accepts_logits_to_keep(self.model)
        self._penalties: list[float] = []

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.periodic_eval(self.model).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:  # random sampling is seeded per epoch already
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.labelled_logits_only and "labels" in inputs and model.training:
            # The vocabulary projection is a fifth of a small model's FLOPs and its largest
            # activation; prompt tokens and padding need none of it. The model's own loss
            # then reads the kept positions' labels (its `shift_labels`): the same loss.
            keep = labelled_positions(inputs["labels"])
            inputs = {**inputs, "logits_to_keep": keep,
                      "shift_labels": inputs["labels"][:, keep + 1]}
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.penalty is None or not model.training:
            return out
        penalty = self.penalty(model)
        self._penalties.append(penalty.item())
        # The Trainer divides the loss by the accumulation steps unless the model already
        # normalised it over the whole accumulated batch; the penalty is owed once per step.
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None)
        if scaled:
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            return out[0] + penalty, out[1]
        return out + penalty

    def log(self, logs, *args, **kwargs):
        if self._penalties and "loss" in logs:
            logs = {**logs, "penalty": sum(self._penalties) / len(self._penalties)}
            self._penalties.clear()
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}; "
                "lower train.learning_rate or check the data. No results were written."
            )
        return loss


class EvaluateAtEnd(TrainerCallback):
    """A periodic evaluation at the last step too, where eval_steps does not divide it: a
    learning curve then ends at the trained model."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy != "no" and state.global_step >= state.max_steps:
            control.should_evaluate = True


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under any peft wrapper takes `logits_to_keep` (transformers' own
    decoder models do) and computes its loss with transformers' causal-LM loss, which reads
    `shift_labels` when given (a model with its own loss might not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "logits_to_keep" in params and getattr(base, "loss_function", None) is ForCausalLMLoss


def tokenized_dataset(tokenizer, mix: list[dict], max_seq_len: int) -> Dataset:
    rows = [tokenize(tokenizer, item["messages"], max_seq_len) for item in mix]
    # A dialogue whose assistant part was cut off entirely has nothing to learn from.
    rows = [r for r in rows if any(label != -100 for label in r["labels"])]
    return Dataset.from_list(rows)


def train_collator(tokenizer, cfg):
    """Padded batches, or with `cfg.packing` padding-free ones: the batch's examples are
    concatenated into one row whose position ids restart at each example, and the attention
    (flash-attention's varlen kernels, or sdpa/eager through a block-diagonal mask built from
    those position ids) keeps them apart; the first label of each example is masked, so the
    loss is the padded batch's loss."""
    if cfg.packing:
        return DataCollatorWithFlattening()
    return collator(tokenizer)


def training_arguments(cfg, output_dir: Path, seed: int, use_cpu: bool,
                       evaluate: bool) -> TrainingArguments:
    every = cfg.eval_every_steps
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluate and every > 0 else "no",
        eval_steps=every or None,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        bf16=cfg.bf16,
        use_liger_kernel=cfg.use_liger_kernel,
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=use_cpu,
        disable_tqdm=not sys.stderr.isatty(),
        logging_nan_inf_filter=False,  # report a NaN loss as it is
        # Under torchrun: frozen parameters need no gradient, so none goes unused; the search
        # for unused ones costs a pass over the graph every step.
        ddp_find_unused_parameters=False,
    )


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint of this run, to resume from after a restart.
    The Trainer writes a checkpoint in place and `trainer_state.json` last, so a job killed
    while saving leaves a directory without it: that one is skipped, not resumed from."""
    ckpt_dir = output_dir / "checkpoints"
    done = [p for p in ckpt_dir.glob("checkpoint-*")
            if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")))) if done else None


def train(model, tokenizer, mix: list[dict], cfg, output_dir: Path, seed: int,
          periodic_eval=None, penalty=None, callbacks: list[TrainerCallback] = ()) -> list[dict]:
    """Fine-tune `model` in place on `mix`, resuming from this run's last checkpoint if a
    previous attempt left one; returns the Trainer's log history. `periodic_eval(model)`, if
    given, returns {name: value} every `cfg.eval_every_steps` steps (logged as eval_<name>);
    `penalty(model)`, if given, is added to the loss."""
    dataset = tokenized_dataset(tokenizer, mix, cfg.max_seq_len)
    args = training_arguments(cfg, output_dir, seed, use_cpu=not torch.cuda.is_available(),
                              evaluate=periodic_eval is not None)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        # The Trainer insists on an eval set when evaluating; ours runs through lm-eval.
        eval_dataset=dataset.select(range(1)) if args.eval_strategy != "no" else None,
        data_collator=train_collator(tokenizer, cfg),
        callbacks=list(callbacks),
        periodic_eval=periodic_eval,
        penalty=penalty,
        # Liger's fused linear + cross-entropy already skips the logits.
        labelled_logits_only=cfg.labelled_logits_only and not cfg.use_liger_kernel,
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))
    history = trainer.state.log_history
    if history and not math.isfinite(history[-1].get("train_loss", 0.0)):
        raise NonFiniteLossError("non-finite mean training loss; no results were written")
    return history
