"""KL(base || current) during training, at every periodic evaluation: how far the model has
moved from its base in behaviour, the quantity "RL's razor" ties forgetting to.

Two estimates, on sets fixed before training:
  kl_self     held-out self-dialogues of the base model (generated like sasft's, with a seed no
              run trains on). They are samples of the base, so the mean over their answer tokens
              of log p_base(token) - log p_current(token) estimates the per-token KL without
              storing the base's whole distributions (one number per token);
  kl_prompts  the general benchmarks' questions through the chat template: the exact KL of the
              next-token distributions at the first answer token (the base's distribution is
              stored, one vocabulary row per prompt).
Both are 0 for the base model itself. `python -m sasft.analyze` measures drift after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import tokenize
from .generation import held_out_seed

KL_SEED = held_out_seed("kl")  # a held-out stream: never the dialogues a run trains on


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def right_padded(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the right, and the attention mask."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return ids.to(device), mask.to(device)


class KLProbe:
    """Built on the base model before training; called on the current model, returns
    {"kl_self": ..., "kl_prompts": ...} (a set that is empty is left out)."""

    def __init__(self, model, tokenizer, dialogues: list, prompts: list[str],
                 max_seq_len: int, batch_size: int = 16):
        self.batch_size, self.pad = batch_size, tokenizer.pad_token_id
        rows = [tokenize(tokenizer, d, max_seq_len) for d in dialogues]
        self.rows = [r for r in rows if any(label != -100 for label in r["labels"])]
        self.prompts = [tokenizer(tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False, truncation=True, max_length=max_seq_len)["input_ids"]
            for p in prompts]
        with torch.no_grad(), _eval_mode(model):
            self.base_token_lp = [lp for chunk in chunks(self.rows, self.batch_size)
                                  for lp in self._token_logprobs(model, chunk)]
            self.base_next = [row for chunk in chunks(self.prompts, self.batch_size)
                              for row in self._next_logprobs(model, chunk)]

    def _token_logprobs(self, model, rows: list[dict]) -> list[torch.Tensor]:
        """log p(token) of each labelled (answer) token of each row."""
        ids, mask = right_padded([r["input_ids"] for r in rows], self.pad, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None])[..., 0].cpu()
        return [lp[i, :len(r["labels"]) - 1][torch.tensor(r["labels"][1:]) != -100]
                for i, r in enumerate(rows)]

    def _next_logprobs(self, model, rows: list[list[int]]) -> list[torch.Tensor]:
        """The next-token log-distribution after each prompt (right padding: at its end)."""
        ids, mask = right_padded(rows, self.pad, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        last = mask.sum(1) - 1
        return list(F.log_softmax(logits[torch.arange(len(rows)), last], -1).cpu())

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        out = {}
        with _eval_mode(model):
            if self.rows:
                now = [lp for chunk in chunks(self.rows, self.batch_size)
                       for lp in self._token_logprobs(model, chunk)]
                diffs = torch.cat([b - n for b, n in zip(self.base_token_lp, now)])
                out["kl_self"] = diffs.double().mean().item()
            if self.prompts:
                now = [row for chunk in chunks(self.prompts, self.batch_size)
                       for row in self._next_logprobs(model, chunk)]
                kls = [(b.exp() * (b - n)).sum() for b, n in zip(self.base_next, now)]
                out["kl_prompts"] = torch.stack(kls).double().mean().item()
        return out


class _eval_mode:
    """The model in eval mode (no dropout) inside, its own mode restored after."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)
