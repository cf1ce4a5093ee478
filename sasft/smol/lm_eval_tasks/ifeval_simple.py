"""The data and the scorer of the sasft_smol_ifeval lm-eval task (its YAML beside this file)."""

from pathlib import Path

import datasets

FILE = Path(__file__).resolve().parents[1] / "data" / "general" / "ifeval_simple.jsonl"


def load(**_) -> dict:
    return {"test": datasets.load_dataset("json", data_files=str(FILE), split="train")}


def process_results(doc, results):
    """lm-eval's IFEval scoring, with only the prompt-level accuracies (a single instruction
    per prompt: the instruction level says the same)."""
    from lm_eval.tasks.ifeval.utils import process_results as ifeval_process_results

    out = ifeval_process_results(doc, results)
    return {k: out[k] for k in ("prompt_level_strict_acc", "prompt_level_loose_acc")}
