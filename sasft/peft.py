"""Parameter-efficient fine-tuning: LoRA adapters (peft) on top of whatever a method left
trainable. `conf/peft/none.yaml` is full fine-tuning; `conf/peft/lora.yaml` is LoRA.

LoRA composes with every method because it follows `method.select_trainable`: adapters go on the
decoder layers that still have trainable parameters, and nowhere else. For task_only, ext_mix
and sasft that is every layer; for freeze it is the unfrozen top layers only (peft's
`layers_to_transform`), so the frozen layers stay exactly at their base values. Under LoRA every
base weight is frozen, embeddings and output head included.

A LoRA run's `model/` directory holds the adapter alone (`adapter_config.json` and
`adapter_model.safetensors`: 0.7 GB for an 8B model at r=64 instead of 16 GB), since 40 runs of
merged weights would not fit most disks; `load_finetuned` merges it into its base on load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import ConfigError
from .model import decoder_layers

log = logging.getLogger(__name__)


def linear_module_names(model) -> list[str]:
    """The names (last component) of every linear layer but the output head: what peft's
    `all-linear` means, spelled out so it can be combined with `layers_to_transform`."""
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def trainable_layer_indices(model) -> list[int]:
    """Indices of the decoder layers that still have a trainable parameter."""
    return [i for i, layer in enumerate(decoder_layers(model))
            if any(p.requires_grad for p in layer.parameters())]


def lora_config(model, cfg):
    from peft import LoraConfig, TaskType

    n_layers = len(decoder_layers(model))
    layers = trainable_layer_indices(model)
    if not layers:
        raise ConfigError("peft=lora: the method left no decoder layer trainable, so there is "
                          "nowhere to put adapters (method.trainable_layers=0?)")
    targets = cfg.target_modules
    if not isinstance(targets, str):
        targets = list(targets)
    partial = len(layers) < n_layers
    if partial:
        if targets == "all-linear":
            targets = linear_module_names(model)
        elif isinstance(targets, str):
            raise ConfigError("peft.target_modules must be `all-linear` or a list of module "
                              "names when freezing: peft cannot restrict a regex to layers")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        layers_to_transform=layers if partial else None,
        layers_pattern=decoder_layers_name(model) if partial else None,
    )


def decoder_layers_name(model) -> str:
    """The attribute name of the decoder stack ("layers" for Llama and Qwen2), which peft
    matches in module paths to find layer indices."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name.rsplit(".", 1)[-1]
    raise ConfigError(f"cannot name the decoder layers of {type(model).__name__}")


def apply_peft(model, peft_cfg, method=None):
    """The model to train: unchanged for full fine-tuning (`peft=none`, named "full"),
    else wrapped in LoRA adapters placed where `method` left the model trainable."""
    if peft_cfg is None or peft_cfg.name == "full":
        return model
    if peft_cfg.name != "lora":
        raise ConfigError(f"unknown peft {peft_cfg.name!r}; allowed values: none, lora")
    from peft import get_peft_model

    config = lora_config(model, peft_cfg)
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    where = ("all layers" if config.layers_to_transform is None
             else f"layers {config.layers_to_transform[0]}-{config.layers_to_transform[-1]}")
    log.info("LoRA r=%d on %s (%s): %.1fM trainable of %.1fM parameters", config.r, where,
             getattr(method, "name", "method"), trainable / 1e6, total / 1e6)
    return model


def load_finetuned(model_dir: str | Path, dtype: torch.dtype = torch.float32, **kwargs):
    """A run's fine-tuned model as a plain transformers model, whichever way it was saved:
    full weights load as they are; a LoRA adapter is loaded onto its base model (the local path
    or hub id recorded in adapter_config.json) and merged."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs)
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                    **kwargs).merge_and_unload()
