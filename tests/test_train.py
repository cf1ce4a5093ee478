"""The LM head runs only where the loss reads it, and training is the same as with every logit."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

from sasft.model import load_model
from sasft.paths import PACKAGE_DIR
from sasft.train import labelled_positions, train
from tests.conftest import compose_config


def test_labelled_positions_are_those_whose_next_token_is_scored():
    labels = torch.tensor([[-100, -100, 5, 6, -100],
                           [-100, -100, -100, -100, 7]])
    assert labelled_positions(labels).tolist() == [1, 2, 3]


def _train(tmp_path, labelled_logits_only: bool):
    cfg = compose_config(["method=task_only"])
    with open_dict(cfg):
        cfg.train.epochs = 1
        cfg.train.logging_steps = 1
        cfg.train.labelled_logits_only = labelled_logits_only
    model, tokenizer = load_model(cfg.model)
    rows = (json.loads(line) for line in
            (PACKAGE_DIR / "toy/data/tasks/parity/train.jsonl").read_text().splitlines()[:48])
    mix = [{"messages": [{"role": "user", "content": r["prompt"]},
                         {"role": "assistant", "content": r["response"]}]} for r in rows]
    rows_seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows_seen.append(o.shape[1]))
    history = train(model, tokenizer, mix, cfg.train, tmp_path / str(labelled_logits_only), seed=0)
    hook.remove()
    losses = [h["loss"] for h in history if "loss" in h]
    return losses, dict(model.named_parameters()), rows_seen


def test_training_on_labelled_logits_only_is_training_on_all_of_them(tmp_path):
    all_losses, all_params, all_rows = _train(tmp_path, False)
    few_losses, few_params, few_rows = _train(tmp_path, True)
    assert len(few_losses) == len(all_losses) == 3
    assert few_losses == pytest.approx(all_losses, rel=1e-4)
    for name, p in all_params.items():
        torch.testing.assert_close(few_params[name], p, rtol=1e-3, atol=1e-5, msg=name)
    # The prompts ("Is 9521 odd or even?" in the chat template) are most of each row.
    assert sum(few_rows) < 0.5 * sum(all_rows)
