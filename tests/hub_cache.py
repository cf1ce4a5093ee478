"""A private Hugging Face cache as a user's machine has it after downloading on a login node:
tiny random-weight checkpoints under the real hub ids the configs name, with their families'
real chat templates and special tokens, and small copies of the datasets the grid reads, in each
repo's file layout and schema. Used with HF_HOME=<root>, HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1.

Models: the hub cache (hub/models--org--name/{blobs, snapshots/<commit>, refs/main}), which
transformers resolves offline. Datasets: `datasets` offline does not read the hub snapshot; it
reloads the Arrow cache that the online `load_dataset` wrote (datasets/<org>___<name>/<config>/
0.0.0/<commit>/, found by datasets.load.CachedDatasetModuleFactory). So each dataset gets both:
its files in the hub cache, and the Arrow cache built from them by `datasets`' own Parquet/JSON
builder under the names the hub path gives it (dataset name, config, commit hash)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "hub_templates"

# Each family's special tokens as its tokenizer_config.json declares them.
FAMILIES = {
    "llama3": {
        "template": "llama3.2.jinja",
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                    "<|finetune_right_pad_id|>"],
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None,
    },
    "qwen2": {
        "template": "qwen2.5.jinja",
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
    },
}
MODELS = {"meta-llama/Llama-3.2-1B-Instruct": "llama3", "Qwen/Qwen2.5-0.5B-Instruct": "qwen2"}


def commit_of(repo_id: str) -> str:
    """A fixed 40-hex commit per repo, as the hub names snapshots."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def put_repo(hub: Path, kind: str, repo_id: str, files: dict[str, bytes]) -> Path:
    """Files into the hub cache's layout: content-addressed blobs, a snapshot of symlinks to
    them, and refs/main naming the snapshot. Returns the snapshot directory."""
    root = hub / f"{kind}s--{repo_id.replace('/', '--')}"
    commit = commit_of(repo_id)
    snapshot = root / "snapshots" / commit
    for rel, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


# --- models ---------------------------------------------------------------------------------


def tiny_tokenizer(family: str):
    """A byte-level BPE over the 256 bytes (no merges) with the family's special tokens and
    chat template: the real template and specials, a tiny vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"],
        pad_token=spec["pad"], additional_special_tokens=spec["special"],
        chat_template=(TEMPLATES / spec["template"]).read_text())
    return tokenizer


def tiny_model(family: str, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=2048, tie_word_embeddings=True,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  torch_dtype="bfloat16")
    if family == "llama3":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def put_model(hub: Path, repo_id: str, tmp: Path) -> Path:
    family = MODELS[repo_id]
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer)
    out = tmp / repo_id.replace("/", "--")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return put_repo(hub, "model", repo_id, files)


# --- datasets -------------------------------------------------------------------------------


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def put_dataset(hf_home: Path, repo_id: str, configs: dict[str, dict[str, tuple[str, list]]]
                ) -> None:
    """A hub dataset: {config: {split: (path in the repo, rows)}}, its files in the hub cache
    (parquet or JSON Lines by the path's suffix) and the Arrow cache datasets reloads offline."""
    from datasets import DownloadConfig
    from datasets.builder import BuilderConfig  # noqa: F401  (the builders' base)
    from datasets.data_files import DataFilesDict
    from datasets.load import get_dataset_builder_class
    from datasets.load import DatasetModule
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    files = {}
    for splits in configs.values():
        for path, rows in splits.values():
            files[path] = jsonl_bytes(rows) if path.endswith(".jsonl") else parquet_bytes(rows)
    snapshot = put_repo(hf_home / "hub", "dataset", repo_id, files)
    commit = commit_of(repo_id)
    for config, splits in configs.items():
        fmt = "json" if next(iter(splits.values()))[0].endswith(".jsonl") else "parquet"
        module_path, _ = _PACKAGED_DATASETS_MODULES[fmt]
        data_files = DataFilesDict.from_patterns(
            {split: [str(snapshot / path)] for split, (path, _) in splits.items()})
        module = DatasetModule(module_path, commit, {})
        builder_cls = get_dataset_builder_class(module, dataset_name=camelcase_to_snakecase(
            repo_id.split("/")[-1]))
        builder = builder_cls(cache_dir=str(hf_home / "datasets"), config_name=config,
                              data_files=data_files, hash=commit,
                              dataset_name=camelcase_to_snakecase(repo_id.split("/")[-1]))
        # As the hub path names them (the builder refuses local data files with a repo_id at
        # construction): <org>___<name>/<config>, the config named by the repo's README, not by
        # a hash of its data files.
        builder.repo_id, builder.config_id = repo_id, config
        builder._cache_dir = builder._build_cache_dir()
        builder.download_and_prepare(download_config=DownloadConfig(local_files_only=True))


# --- the grid's datasets, a few rows each, in each repo's layout and schema -------------------

GSM8K = [{"question": f"Tom has {n} apples and buys 2 more. How many apples does he have?",
          "answer": f"He has {n} + 2 = <<{n}+2={n + 2}>>{n + 2} apples.\n#### {n + 2}"}
         for n in range(8)]
ARC = [{"id": f"Mercury_{i}", "question": f"Which of these is a planet? ({i})",
        "choices": {"text": ["Mars", "Moon", "Sun", "Comet"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A"} for i in range(4)]
IFEVAL = [{"key": 1000 + i, "prompt": f"Write {i + 2} sentences about the sea, all lowercase.",
           "instruction_id_list": ["length_constraints:number_sentences",
                                   "change_case:english_lowercase"],
           "kwargs": [{"relation": "at least", "num_sentences": i + 2}, {}]} for i in range(3)]


def put_grid_datasets(hf_home: Path) -> None:
    """The datasets this module has rows for (see the rehearsal's report for the rest)."""
    put_dataset(hf_home, "openai/gsm8k", {"main": {
        "train": ("main/train-00000-of-00001.parquet", GSM8K),
        "test": ("main/test-00000-of-00001.parquet", GSM8K)}})
    put_dataset(hf_home, "allenai/ai2_arc", {"ARC-Challenge": {
        split: (f"ARC-Challenge/{split}-00000-of-00001.parquet", ARC)
        for split in ("train", "validation", "test")}})
    put_dataset(hf_home, "google/IFEval", {"default": {
        "train": ("ifeval_input_data.jsonl", IFEVAL)}})


def put_everything(hf_home: Path, tmp: Path) -> None:
    for repo_id in MODELS:
        put_model(hf_home / "hub", repo_id, tmp)
    put_grid_datasets(hf_home)
