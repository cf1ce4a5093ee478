"""Loss terms that hold the weights near the base model's: L2-SP (`l2_base`) and EWC (`ewc`).

    penalty = strength * sum_i F_i * (theta_i - theta0_i)^2      over the trainable parameters

with F = 1 for L2-SP, and for EWC the diagonal Fisher information of the base model, estimated
on the model's own self-dialogues (no access to its training data needed), divided by its mean
so that one `strength` means the same for both. Memory: a copy of the trainable parameters
(theta0), plus one for F under EWC, in the parameters' dtype: for full fine-tuning of an 8B
model in bf16, 16 GB (L2) or 32 GB (EWC) beside the weights.

Under LoRA (`peft=lora`) the trainable parameters are the adapters, whose change from their
initialisation is not a change of the model; L2-SP then penalises what the adapters add to each
weight, ||scaling * B @ A||^2, which is exactly ||W - W0||^2 of the adapted weights. EWC needs
the Fisher of the base weights themselves, which LoRA leaves frozen: it refuses LoRA.
"""

from __future__ import annotations

import torch

from .data import tokenize


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _lora_modules(model) -> list:
    """The LoRA-wrapped linear layers of a peft model (none for a plain model)."""
    return [m for m in model.modules() if hasattr(m, "lora_A") and m.lora_A]


class WeightPenalty:
    """`strength * sum F (theta - theta0)^2`, theta0 taken when built (the base weights,
    since it is built before the first step)."""

    def __init__(self, model, strength: float, fisher: dict[str, torch.Tensor] | None = None):
        self.strength = strength
        self.lora = _lora_modules(model)
        self.anchor = {} if self.lora else {n: p.detach().clone()
                                            for n, p in _trainable(model).items()}
        self.fisher = fisher

    def __call__(self, model) -> torch.Tensor:
        if self.lora:
            return self.strength * sum(_lora_delta(m).pow(2).sum() for m in self.lora)
        params = _trainable(model)
        total = 0.0
        for name, theta0 in self.anchor.items():
            diff = (params[name] - theta0).pow(2)
            total = total + (diff * self.fisher[name] if self.fisher else diff).sum()
        return self.strength * total


def _lora_delta(module) -> torch.Tensor:
    """What the module's active adapters add to its weight: scaling * B @ A."""
    return sum(module.scaling[a] * module.lora_B[a].weight @ module.lora_A[a].weight
               for a in module.active_adapters if a in module.lora_A)


def diagonal_fisher(model, tokenizer, dialogues: list, max_seq_len: int) -> dict[str, torch.Tensor]:
    """E[(d log p(dialogue) / d theta)^2] over `dialogues`, one gradient per dialogue (the
    mean token log-likelihood of its assistant turns), divided by its mean over all trainable
    parameters. The dialogues are the model's own samples, so this is the model's Fisher, not
    the empirical Fisher of someone else's data."""
    params = _trainable(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    try:
        for dialogue in dialogues:
            row = tokenize(tokenizer, dialogue, max_seq_len)
            ids = torch.tensor([row["input_ids"]], device=model.device)
            labels = torch.tensor([row["labels"]], device=model.device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=labels).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float().pow(2) / len(dialogues)
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
    if not mean > 0:
        raise ValueError("the Fisher estimate is zero everywhere: no gradient reached the "
                         "trainable parameters")
    return {n: (f / mean).to(params[n].dtype) for n, f in fisher.items()}
