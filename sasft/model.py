"""Loading a chat model and its tokenizer, from a local directory or a hub id, and naming it.

`model.path` (a local directory) wins over `model.gguf` (a GGUF file shipped in an installed
Python package, converted once into an ordinary checkpoint under the cache), which wins over
`model.hub_id`; `model.revision` pins a hub commit. The toy models load exactly like hub models:
`from_pretrained` on a directory; a model the project builds itself names its `builder` (a
module with `ensure_built(cfg)` and `describe(cfg)`), which makes a missing checkpoint first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from . import cache
from .errors import ConfigError

log = logging.getLogger(__name__)


def model_source(cfg) -> str:
    """The directory or hub id to load from; builds a missing checkpoint (`model.builder`), or
    converts a GGUF file not converted yet, first."""
    if cfg.path:
        if cfg.builder:
            import_module(cfg.builder).ensure_built(cfg)
        if not Path(cfg.path).exists():
            raise ConfigError(f"model.path does not exist: {cfg.path}")
        return str(cfg.path)
    if cfg.gguf is not None:
        return str(gguf_checkpoint(cfg))
    return cfg.hub_id


# --- a GGUF file from an installed package (model.gguf) -----------------------------------------


def gguf_file(cfg) -> Path:
    """The GGUF file `model.gguf` names, inside its installed package (found, not imported: a
    package that only ships weights may import things it does not need here)."""
    spec = cfg.gguf
    missing = [m for m in (spec.package, "gguf") if find_spec(m) is None]
    if missing:
        raise ConfigError(f"model={cfg.name} needs the {' and '.join(missing)} package"
                          f"{'s' if len(missing) > 1 else ''}: {spec.install}")
    path = Path(find_spec(spec.package).submodule_search_locations[0]) / spec.file
    if not path.is_file():
        raise ConfigError(f"model={cfg.name}: {spec.package} has no {spec.file}; reinstall it: "
                          f"{spec.install}")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime: float) -> str:  # size, mtime: a changed file rehashes
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_digest(cfg) -> str:
    """The GGUF file's sha256, first 16 hex digits: names its conversion and the model."""
    path = gguf_file(cfg)
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime)[:16]


def gguf_checkpoint(cfg) -> Path:
    """`<gguf.cache_dir>/models/<name>-<digest>`: an ordinary safetensors checkpoint (weights,
    config, tokenizer with its chat template) converted from the GGUF file once, under a lock,
    into a temporary directory renamed into place; later runs load it in seconds."""
    target = Path(cfg.gguf.cache_dir) / "models" / f"{cfg.name}-{gguf_digest(cfg)}"
    if (target / "config.json").is_file():
        return target
    with cache.locked(target):
        if not (target / "config.json").is_file():  # another job may have converted it meanwhile
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            start = time.perf_counter()
            convert_gguf(gguf_file(cfg), tmp)
            os.replace(tmp, target)
            log.info("converted %s into %s in %.0f s", gguf_file(cfg), target,
                     time.perf_counter() - start)
    return target


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint (transformers reads it with the gguf package) and save it
    as float32 safetensors. A model loaded from GGUF refuses `save_pretrained` (it is flagged
    quantized), so its weights go into a fresh model built from the same config, without the
    quantization entry."""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _hub_kwargs(cfg) -> dict:
    """Arguments every `from_pretrained` call shares. A revision means something only for a
    hub id; remote code runs only when the user opted in (`model.trust_remote_code=true`)."""
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if not cfg.path and cfg.revision:
        kwargs["revision"] = cfg.revision
    return kwargs


def load_tokenizer(cfg):
    """The model's own tokenizer and chat template; a model without a chat template is
    refused here, before any weights are read (SA-SFT needs the model's own chat format)."""
    source = model_source(cfg)
    loader = getattr(transformers, cfg.tokenizer_class)  # AutoTokenizer unless the config says
    tokenizer = loader.from_pretrained(source, **_hub_kwargs(cfg))
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model {cfg.name} ({source}) has no chat template; SA-SFT needs a chat (instruct) "
            "model. Use the -Instruct checkpoint, or add a chat_template to its tokenizer."
        )
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def inspect_model(cfg):
    """The architecture and the tokenizer, without the weights: enough to check layer counts
    and sequence lengths before anything expensive, and to refuse a model without a chat
    template. A model not built yet is described by its builder, so checking never builds."""
    if cfg.builder and not (Path(cfg.path) / "config.json").is_file():
        return import_module(cfg.builder).describe(cfg)
    tokenizer = load_tokenizer(cfg)
    return AutoConfig.from_pretrained(model_source(cfg), **_hub_kwargs(cfg)), tokenizer


def _device() -> torch.device | None:
    """This process's GPU: under torchrun / accelerate launch each rank takes the GPU named
    by LOCAL_RANK (all ranks on cuda:0 would load N copies of the weights onto one card)."""
    if not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def load_model(cfg):
    source = model_source(cfg)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=getattr(torch, cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        **_hub_kwargs(cfg),
    )
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing (transformers' default) lets gradients reach trainable
        # layers above frozen embeddings (freeze) and LoRA adapters on frozen weights.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable()
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if (device := _device()) is not None:
        model.to(device)
    return model, tokenizer


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks, for the architectures this project runs."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, base.base_model_prefix, base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"cannot find the decoder layers of {type(base).__name__}")
    return layers


def hub_commit(cfg) -> str:
    """The commit a hub model was loaded from: read from the local HF cache (no network), so
    an unpinned model that moves on the hub gets a new fingerprint instead of reusing stale
    base scores and self-dialogues. Falls back to the configured revision."""
    revision = cfg.revision or "main"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(cfg.hub_id, "config.json", revision=revision)
    except Exception:  # an unusual cache layout must not stop a run; the revision still names it
        cached = None
    if isinstance(cached, str):  # .../snapshots/<commit sha>/config.json
        return Path(cached).parent.name
    return revision


def fingerprint(cfg) -> str:
    """A short id of the model's weights and tokenizer, for keys of cached artifacts.
    Local files are hashed by size and their first and last MiB (cheap even for 16 GB of
    weights); a model converted from GGUF by the file's hash; a hub model by id and the commit it
    was loaded from."""
    if not cfg.path and cfg.gguf is not None:
        return gguf_digest(cfg)
    if not cfg.path:
        return hashlib.sha256(f"{cfg.hub_id}@{hub_commit(cfg)}".encode()).hexdigest()[:16]
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
