"""Loading a chat model and its tokenizer, from a local directory or a hub id, and naming it.

The toy models load exactly like hub models: `from_pretrained` on a directory. The only toy
special case is that a missing toy checkpoint is built (pretrained) first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .config import ConfigError

log = logging.getLogger(__name__)


def model_source(cfg) -> str:
    """The directory or hub id to load from; builds a missing toy checkpoint first."""
    if cfg.get("path"):
        if "toy" in cfg:
            from .toy.build import ensure_toy_model

            ensure_toy_model(cfg)
        if not Path(cfg.path).exists():
            raise ConfigError(f"model.path does not exist: {cfg.path}")
        return str(cfg.path)
    return cfg.hub_id


def load_config(cfg):
    """The architecture alone (no weights): enough to check layer counts early. A toy model
    not built yet is described by its spec, so checking never triggers a build."""
    if "toy" in cfg and not (Path(cfg.path) / "config.json").is_file():
        return AutoConfig.for_model(cfg.toy.architecture, **cfg.toy.config)
    return AutoConfig.from_pretrained(model_source(cfg), trust_remote_code=cfg.trust_remote_code)


def load_model(cfg):
    source = model_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model {cfg.name} ({source}) has no chat template; SA-SFT needs a chat model"
        )
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=getattr(torch, cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks, for the architectures this project runs."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, base.base_model_prefix, base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"cannot find the decoder layers of {type(base).__name__}")
    return layers


def fingerprint(cfg) -> str:
    """A short id of the model's weights and tokenizer, for keys of cached artifacts.
    Local files are hashed by size and their first and last MiB (cheap even for 16 GB of
    weights); a hub model is named by id and revision."""
    if not cfg.get("path"):
        return hashlib.sha256(f"{cfg.hub_id}@{cfg.get('revision', 'main')}".encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for f in sorted(Path(cfg.path).iterdir()):
        if not f.is_file():
            continue
        size = f.stat().st_size
        digest.update(json.dumps([f.name, size]).encode())
        with f.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:16]
