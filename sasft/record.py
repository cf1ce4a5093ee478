"""`results.json`: the record of one finished run, and the interface that sweeps, reports and
W&B build on. Written atomically, and only when the run is complete.

Schema (version 3; 2 had no chance, items or KL; 1 had no identity and gave every method a
mix_ratio):
    {
      "schema": 3,
      "run":    {"model", "task", "method" (the conf/method option), "method_params",
                 "mix_ratio" (null for methods that mix nothing), "mixes_data", "seed", "peft",
                 "identity" (hash of the identity, in the run directory's name),
                 "variant" (hash of the identity without the seed)},
      "scores": {"<benchmark>": {"base", "final", "delta", "kind": "in_domain" | "general",
                                 "chance" (guessing's score, or null where unknown),
                                 "num_fewshot" (the few-shot count lm-eval used)}},
      "items":  {"<benchmark>": {"base": [score per test item], "final": [...]}},  # same items,
                # in test order: paired bootstrap intervals (null where the metric has no
                # per-item score, chrF)
      "summary": {"in_domain_base", "in_domain_final", "in_domain_delta",
                  "general_base", "general_final", "general_delta"},   # general: mean over skills
      "mix":    {"task": n, "auxiliary": n, "auxiliary_stats": {...},  # sasft: per role, turns
                 # cut and tokens as trained and as written (sasft/generation.py, turn_stats)
                 "task_truncated": {"examples", "cut", "longest"},   # by train.max_seq_len
                 "auxiliary_truncated": n},                          # likewise
      "history": [...],   # the Trainer's log history: loss (and a method's penalty), learning
                          # rate; at each periodic evaluation eval_in_domain and, when measured,
                          # eval_kl_self / eval_kl_prompts (sasft/kl.py); step 0 is the base
      "identity": {...},  # {dotted field: value}: what the run is (sasft/rundir.py)
      "config": {...},    # the resolved Hydra config
      "timings": {"<stage>": seconds, "total": seconds},
      "versions": {"<package>": "<version>"}
    }
Beside it, `forgetting_examples.jsonl`: items of each general benchmark that the base model
answered right and the fine-tuned one wrong, both answers side by side.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from statistics import fmean

from .cache import publish_json

RESULTS_FILE = "results.json"
EXAMPLES_FILE = "forgetting_examples.jsonl"
SCHEMA_VERSION = 3
_PACKAGES = ("sasft", "torch", "transformers", "peft", "lm_eval", "hydra-core", "datasets",
             "accelerate", "wandb", "submitit")


def versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def score_table(base: dict[str, dict], final: dict[str, dict], kinds: dict[str, str]) -> dict:
    """Scores from the base and final results of sasft.evaluate.evaluate_items."""
    return {
        name: {"base": base[name]["score"], "final": final[name]["score"],
               "delta": final[name]["score"] - base[name]["score"], "kind": kinds[name],
               "chance": base[name]["chance"], "num_fewshot": final[name].get("num_fewshot")}
        for name in kinds
    }


def item_scores(base: dict[str, dict], final: dict[str, dict]) -> dict:
    """Per-item scores of the same test items before and after, or None for a benchmark
    without them."""
    out = {}
    for name in base:
        before, after = base[name]["items"], final[name]["items"]
        same = before and after and [(i["task"], i["doc_id"]) for i in before] == \
            [(i["task"], i["doc_id"]) for i in after]
        out[name] = {"base": [i["score"] for i in before],
                     "final": [i["score"] for i in after]} if same else None
    return out


def summarize(scores: dict) -> dict:
    summary = {}
    for kind, prefix in (("in_domain", "in_domain"), ("general", "general")):
        rows = [s for s in scores.values() if s["kind"] == kind]
        if rows:
            for field in ("base", "final", "delta"):
                summary[f"{prefix}_{field}"] = fmean(r[field] for r in rows)
    return summary


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / RESULTS_FILE
    publish_json(path, {"schema": SCHEMA_VERSION, **results})
    return path


def read_results(run_dir: Path) -> dict | None:
    """A finished run's results, or None if the run has not completed."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def format_table(scores: dict) -> str:
    lines = [f"{'benchmark':<14} {'kind':<10} {'base':>7} {'final':>7} {'delta':>8}"]
    for name, s in sorted(scores.items(), key=lambda kv: (kv[1]["kind"] != "in_domain", kv[0])):
        lines.append(f"{name:<14} {s['kind']:<10} {s['base']:>7.3f} {s['final']:>7.3f} "
                     f"{s['delta']:>+8.3f}")
    summary = summarize(scores)
    if "general_base" in summary:
        lines.append(f"{'general mean':<14} {'general':<10} {summary['general_base']:>7.3f} "
                     f"{summary['general_final']:>7.3f} {summary['general_delta']:>+8.3f}")
    return "\n".join(lines)
