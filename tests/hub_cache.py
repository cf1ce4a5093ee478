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
    model = (LlamaForCausalLM(LlamaConfig(**common)) if family == "llama3"
             else Qwen2ForCausalLM(Qwen2Config(**common)))
    # Random weights sample uniformly over the vocabulary and never end a turn, so every
    # self-dialogue would hit the token limit. One embedding dimension held at a constant
    # carries through the residual stream to the (tied) output head, where the end-of-turn
    # token's larger value there gives it a logit above the rest: turns of a few dozen tokens.
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed[:, 0] = 1.0
        embed[tokenizer.eos_token_id, 0] = 1.0 + EOS_MARGIN
    return model


EOS_MARGIN = 0.2


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


def csv_bytes(rows: list[dict]) -> bytes:
    import csv

    sink = io.StringIO()
    writer = csv.DictWriter(sink, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return sink.getvalue().encode()


# A file's format by its suffix, as the hub's loader picks the builder: (writer, builder name).
FORMATS = {
    ".parquet": (parquet_bytes, "parquet"),
    ".jsonl": (lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode(), "json"),
    ".json": (lambda rows: json.dumps(rows).encode(), "json"),  # one JSON array
    ".csv": (csv_bytes, "csv"),
}


def put_dataset(hf_home: Path, repo_id: str,
                configs: dict[str, dict[str, tuple[str | list[str], list]]]) -> None:
    """A hub dataset: {config: {split: (path in the repo, or its shards' paths, rows)}}, its
    files in the hub cache (format by suffix, rows dealt over the shards) and the Arrow cache
    datasets reloads offline."""
    from datasets import DownloadConfig
    from datasets.data_files import DataFilesDict
    from datasets.load import DatasetModule, get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    files, shards = {}, {}
    for config, splits in configs.items():
        for split, (paths, rows) in splits.items():
            paths = [paths] if isinstance(paths, str) else paths
            shards[config, split] = paths
            for i, path in enumerate(paths):
                files[path] = FORMATS[Path(path).suffix][0](rows[i::len(paths)])
    snapshot = put_repo(hf_home / "hub", "dataset", repo_id, files)
    commit = commit_of(repo_id)
    name = camelcase_to_snakecase(repo_id.split("/")[-1])
    for config, splits in configs.items():
        fmt = FORMATS[Path(shards[config, next(iter(splits))][0]).suffix][1]
        module = DatasetModule(_PACKAGED_DATASETS_MODULES[fmt][0], commit, {})
        data_files = DataFilesDict.from_patterns(
            {split: [str(snapshot / p) for p in shards[config, split]] for split in splits})
        builder = get_dataset_builder_class(module, dataset_name=name)(
            cache_dir=str(hf_home / "datasets"), config_name=config, data_files=data_files,
            hash=commit, dataset_name=name)
        # As the hub path names them (the builder refuses local data files with a repo_id at
        # construction): <org>___<name>/<config>, the config named by the repo's README, not by
        # a hash of its data files.
        builder.repo_id, builder.config_id = repo_id, config
        builder._cache_dir = builder._build_cache_dir()
        # Rebuilt on every call: a second call with other rows must not keep the first ones.
        builder.download_and_prepare(download_config=DownloadConfig(local_files_only=True),
                                     download_mode="force_redownload")


# --- the grid's datasets, a few rows each, in each repo's layout and schema -------------------
# The right choice varies from item to item and subject to subject, all four letters among
# the first items: a random model that prefers one letter scores neither 0 nor 1.
# Layouts and fields as each hub repo has them (its file tree and README's dataset_info); the
# split arithmetic of conf/task/*.yaml ("train[:-200]", "train[500:]") needs the row counts the
# tasks hold out and a few more.

GSM8K = [{"question": f"Tom has {n} apples and buys 2 more. How many apples does he have?",
          "answer": f"He has {n} + 2 = <<{n}+2={n + 2}>>{n + 2} apples.\n#### {n + 2}"}
         for n in range(8)]
# arc_challenge is 25-shot from the train split: at least 25 rows besides the question.
ARC = [{"id": f"Mercury_{i}", "question": f"Which of these is a planet? ({i})",
        "choices": {"text": ["Mars", "Moon", "Sun", "Comet"], "label": ["A", "B", "C", "D"]},
        "answerKey": "CBAD"[i % 4]} for i in range(30)]
IFEVAL = [{"key": 1000 + i, "prompt": f"Write {i + 2} sentences about the sea, all lowercase.",
           "instruction_id_list": ["length_constraints:number_sentences",
                                   "change_case:english_lowercase"],
           "kwargs": [{"relation": "at least", "num_sentences": i + 2}, {}]} for i in range(3)]
MEDTEXT = [{"Prompt": f"A {30 + i % 40}-year-old presents with fever and a cough for {i % 9 + 1} "
                      "days. What is the likely diagnosis and management?",
            "Completion": "Likely community-acquired pneumonia. Chest X-ray, then amoxicillin."}
           for i in range(210)]  # medtext holds out the last 200
PUBMEDQA = [{"pubid": 10000 + i, "question": f"Does drug {i} reduce mortality after surgery?",
             "context": {"contexts": [f"Background of study {i}.", "Methods and results."],
                         "labels": ["BACKGROUND", "RESULTS"], "meshes": ["Humans", "Surgery"],
                         "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
             "long_answer": f"Drug {i} reduced mortality.",
             "final_decision": ("yes", "no", "maybe")[i % 3]}
            for i in range(510)]  # pubmedqa trains on the first 500
SQL = [{"answer": f"SELECT name FROM head WHERE age > {i}",
        "question": f"Which heads are older than {i}?",
        "context": "CREATE TABLE head (name VARCHAR, age INTEGER)"}
       for i in range(1010)]  # sql holds out the last 1000
WMT = [{"translation": {"de": f"Das Haus {i} ist klein.", "en": f"The house {i} is small."}}
       for i in range(9)]
ULTRACHAT = [{"prompt": f"How do I boil an egg, variant {i}?", "prompt_id": f"{i:064x}",
              "messages": [{"content": f"How do I boil an egg, variant {i}?", "role": "user"},
                           {"content": "Put it in boiling water for nine minutes.",
                            "role": "assistant"}]} for i in range(12)]


def mmlu_subjects() -> list[str]:
    """The 57 subject configs of cais/mmlu, as lm-eval's mmlu tasks name them."""
    import re

    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    return sorted(re.search(r'"dataset_name": "(\w+)"', f.read_text()).group(1)
                  for f in root.glob("mmlu_*.yaml"))


def mmlu_rows(subject: str, n: int) -> list[dict]:
    return [{"question": f"In {subject.replace('_', ' ')}, which option is first? ({i})",
             "subject": subject, "choices": ["first", "second", "third", "fourth"],
             "answer": (i + len(subject)) % 4} for i in range(n)]


# lm-eval's agieval group (lm_eval/tasks/agieval/agieval.yaml): one hails/agieval-<name> repo
# per task, its test split in data/; two are generative ("query", "answer"), the rest multiple
# choice ("query", "choices", "gold": the right choices' indices).
AGIEVAL_GENERATIVE = ["gaokao-mathcloze", "math"]
AGIEVAL_MC = ["aqua-rat", "gaokao-biology", "gaokao-chemistry", "gaokao-chinese",
              "gaokao-english", "gaokao-geography", "gaokao-history", "gaokao-mathqa",
              "gaokao-physics", "jec-qa-ca", "jec-qa-kd", "logiqa-en", "logiqa-zh", "lsat-ar",
              "lsat-lr", "lsat-rc", "sat-en", "sat-en-without-passage", "sat-math"]


def agieval_rows(task: str) -> list[dict]:
    if task in AGIEVAL_GENERATIVE:
        return [{"query": f"Q: What is {i} + 2? A: The answer is", "answer": str(i + 2)}
                for i in range(2)]
    return [{"query": f"Q: Which letter comes first? ({i}) Answer Choices: (A)a (B)b (C)c (D)d "
                      "A: Among A through D, the answer is",
             "choices": ["(A)a", "(B)b", "(C)c", "(D)d"], "gold": [(i + len(task)) % 4]}
            for i in range(2)]


def put_grid_datasets(hf_home: Path) -> None:
    """Every dataset the paper grid reads: the five tasks, UltraChat, and the datasets behind
    lm-eval's mmlu, ifeval, agieval and arc_challenge."""
    put_dataset(hf_home, "openai/gsm8k", {"main": {
        "train": ("main/train-00000-of-00001.parquet", GSM8K),
        "test": ("main/test-00000-of-00001.parquet", GSM8K)}})
    put_dataset(hf_home, "BI55/MedText", {"default": {"train": ("medtext_2.csv", MEDTEXT)}})
    put_dataset(hf_home, "qiaojin/PubMedQA", {"pqa_labeled": {
        "train": ("pqa_labeled/train-00000-of-00001.parquet", PUBMEDQA)}})
    put_dataset(hf_home, "b-mc2/sql-create-context", {"default": {
        "train": ("sql_create_context_v4.json", SQL)}})
    put_dataset(hf_home, "wmt/wmt16", {"de-en": {
        "train": ([f"de-en/train-0000{i}-of-00003.parquet" for i in range(3)], WMT),
        "validation": ("de-en/validation-00000-of-00001.parquet", WMT[:3]),
        "test": ("de-en/test-00000-of-00001.parquet", WMT[:3])}})
    put_dataset(hf_home, "HuggingFaceH4/ultrachat_200k", {"default": {
        "train_sft": ([f"data/train_sft-0000{i}-of-00003-{commit_of(str(i))[:16]}.parquet"
                       for i in range(3)], ULTRACHAT),
        "test_sft": (f"data/test_sft-00000-of-00001-{commit_of('t')[:16]}.parquet", ULTRACHAT[:3]),
        "train_gen": ([f"data/train_gen-0000{i}-of-00003-{commit_of('g' + str(i))[:16]}.parquet"
                       for i in range(3)], ULTRACHAT),
        "test_gen": (f"data/test_gen-00000-of-00001-{commit_of('tg')[:16]}.parquet",
                     ULTRACHAT[:3])}})
    put_dataset(hf_home, "allenai/ai2_arc", {"ARC-Challenge": {
        split: (f"ARC-Challenge/{split}-00000-of-00001.parquet", ARC if split == "train" else ARC[:4])
        for split in ("train", "validation", "test")}})
    put_dataset(hf_home, "google/IFEval", {"default": {
        "train": ("ifeval_input_data.jsonl", IFEVAL)}})
    # lm-eval's mmlu scores the test split, its 5 few-shot examples the dev split's first 5.
    put_dataset(hf_home, "cais/mmlu", {s: {
        split: (f"{s}/{split}-00000-of-00001.parquet", mmlu_rows(s, n))
        for split, n in (("test", 2), ("validation", 1), ("dev", 5))} for s in mmlu_subjects()})
    for task in AGIEVAL_GENERATIVE + AGIEVAL_MC:
        put_dataset(hf_home, f"hails/agieval-{task}", {"default": {
            "test": ("data/test-00000-of-00001.parquet", agieval_rows(task))}})


# --- NLTK's punkt_tab ---------------------------------------------------------------------------


def put_punkt_tab(nltk_data: Path) -> Path:
    """A tiny English punkt_tab in NLTK's file format (what `python -m nltk.downloader punkt_tab`
    installs: tab-separated parameter files), for NLTK_DATA=<nltk_data>. IFEval's checkers
    split sentences with it; a few abbreviations are enough for the rows above."""
    lang = nltk_data / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    (lang / "abbrev_types.txt").write_text("dr\nmr\nmrs\ne.g\ni.e\nu.s\n")
    (lang / "collocations.tab").write_text("##number##\tjanuary\n")
    (lang / "sent_starters.txt").write_text("the\nbut\nhe\nshe\nit\n")
    (lang / "ortho_context.tab").write_text("the\t46\nsea\t32\n")
    return nltk_data


def put_everything(hf_home: Path, tmp: Path) -> None:
    """Models and datasets into HF_HOME=<hf_home>, punkt_tab into NLTK_DATA=<hf_home>/nltk_data."""
    put_punkt_tab(hf_home / "nltk_data")
    for repo_id in MODELS:
        put_model(hf_home / "hub", repo_id, tmp)
    put_grid_datasets(hf_home)
