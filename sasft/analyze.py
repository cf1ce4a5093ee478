"""Drift analysis: how far fine-tuning moved a model from its base, in weights and in behaviour.

    python -m sasft.analyze outputs/                        # every finished run under it
    python -m sasft.analyze outputs/tiny/parity/sasft/full_ratio1.0_seed0-<hash>
    python -m sasft.analyze outputs/ --dialogues 64 --max-prompts 100 --force

For each finished run that kept its weights (`model/`, train.save_model=true) it writes
`drift.json` beside `results.json`, with four measures of the paper's "style-induced drift":
  - weights: relative change ||W_ft - W_base|| / ||W_base|| per decoder layer and module type
    (q, k, v, o, gate, up, down, norm), for the embeddings and lm_head where present, and for all
    parameters together ("global"); "mean_layer" is the mean over decoder layers. A LoRA run
    (an adapter in `model/`) is merged into its base first: its drift is the merged weights';
  - self_dialogue_nll: mean token NLL of the base model's own self-dialogues under the base and
    the fine-tuned model, and the increase. The dialogues are sampled from the base once (a
    fixed count, a seed no training run uses, so they are fresh samples rather than the very
    dialogues sasft trained on) and cached like the pipeline's (`cache_dir`);
  - kl: mean token-level KL(base || fine-tuned) of next-token distributions over the general
    benchmarks' prompts (through the chat template, with the generation prompt), and the KL at
    the last prompt token alone (the first answer token);
  - style_leakage: the share of general prompts the fine-tuned model answers (greedily) in the
    task's style rather than the base's. Toy models: an answer not opening with the house style's
    "Sure!" is leaked (exact there), counted over the prompts the base answers in that style.
    Other models: a length proxy, an answer shorter than half the base's answer; drift.json and
    the output say which rule was used;
  - answer_nll: the base model's mean token NLL of the fine-tuned model's greedy answers to the
    same prompts, against its NLL of its own greedy answers, and the increase: how far the
    answers moved from what the base would write, whatever their length or opening, so a
    style measure for any model (the leakage share's rules fit the toy world best).
Base-model work (loading, self-dialogues, base NLL, base answers) is done once per base model
for a whole sweep. `python -m sasft.report` reads the drift.json files into its "Drift" section.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .peft import load_finetuned
from .data import tokenize
from .evaluate import benchmark_prompts
from .generation import cached_self_dialogues, complete, held_out_seed
from .kl import chunks, right_padded
from .model import fingerprint, load_model, model_source
from .cache import publish_json
from .record import read_results
from .report.runs import DRIFT_FILE, Run, find_runs
from .schema import benchmark_spec

log = logging.getLogger(__name__)

ANALYSIS_SEED = held_out_seed("analysis")  # a held-out stream: not the dialogues a run trained on
LENGTH_PROXY = 0.5  # no house style: an answer shorter than this share of the base answer leaked
MODULE_TYPES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class Settings:
    dialogues: int = 64  # held-out self-dialogues per base model
    max_prompts: int = 100  # prompts per general benchmark, for KL and leakage
    batch_size: int = 32  # sequences per forward pass; lower it for big vocabularies
    max_len: int = 512  # tokens kept per self-dialogue
    cache_dir: str | None = None  # default: the run's cache_dir, shared with the pipeline


# --- weights --------------------------------------------------------------------------------


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a save_pretrained directory (sharded or not)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / f for name, f in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}


def saved_tensors(model_dir: Path):
    """(name, tensor) of a save_pretrained directory, one tensor in memory at a time."""
    from safetensors import safe_open

    files = tensor_files(model_dir)
    for path in sorted(set(files.values())):
        with safe_open(str(path), "pt") as f:
            for name in sorted(n for n in f.keys() if files[n] == path):
                yield name, f.get_tensor(name)


def tuned_tensors(tuned_dir: Path, tuned_model):
    """The fine-tuned weights: from the files when the run saved full weights (exact, no
    reload), else from the model in memory (a LoRA adapter merged into its base on load).
    named_parameters() lists a tied head once, as save_pretrained does."""
    if (tuned_dir / "adapter_config.json").is_file():
        return ((n, p.detach()) for n, p in tuned_model.named_parameters())
    return saved_tensors(tuned_dir)


def groups_of(name: str) -> list[tuple]:
    """The groups a tensor's change counts toward: its layer and module type, its layer as a
    whole, or embeddings / lm_head / other; and always the global total."""
    match = _LAYER.search(name)
    if match:
        layer = int(match.group(1))
        parts = name.split(".")
        kind = next((MODULE_TYPES[p] for p in parts if p in MODULE_TYPES),
                    "norm" if "norm" in name else "other")
        return [("layer", layer, kind), ("layer", layer, "all"), ("global",)]
    if "embed_tokens" in name or name.endswith("wte.weight"):
        return [("embeddings",), ("global",)]
    if name.startswith("lm_head"):
        return [("lm_head",), ("global",)]
    return [("other",), ("global",)]


def _relative(sq_diff: float, sq_base: float) -> float | None:
    if sq_base == 0:
        return 0.0 if sq_diff == 0 else None  # undefined: a zero tensor that moved
    return (sq_diff / sq_base) ** 0.5


def squared_changes(base_dir: Path, tuned) -> tuple[dict, dict, list[str]]:
    """Sums of squared changes and of squared base weights per group, and the tensor names
    found on one side only. The base tensor is cast to the tuned tensor's dtype before the
    difference, so a checkpoint stored in float32 and trained in bfloat16 shows no rounding
    as drift."""
    from safetensors import safe_open

    base_files = tensor_files(Path(base_dir))
    sq_diff: dict[tuple, float] = defaultdict(float)
    sq_base: dict[tuple, float] = defaultdict(float)
    seen, unmatched = set(), []
    with ExitStack() as stack:
        handles: dict[Path, object] = {}
        for name, w_ft in tuned:
            seen.add(name)
            path = base_files.get(name)
            if path is None:
                unmatched.append(name)
                continue
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), "pt"))
            w = handles[path].get_tensor(name)
            if w.shape != w_ft.shape:
                unmatched.append(name)
                continue
            base_as_tuned = w.to(w_ft.dtype).float()
            diff = (w_ft.to("cpu", torch.float32) - base_as_tuned).pow(2)
            diff = diff.sum(dtype=torch.float64).item()
            norm = w.float().pow(2).sum(dtype=torch.float64).item()
            for group in groups_of(name):
                sq_diff[group] += diff
                sq_base[group] += norm
    return sq_diff, sq_base, sorted(unmatched + [n for n in base_files if n not in seen])


def weight_drift(base_dir: Path, tuned) -> dict:
    """Relative Frobenius change ||W_ft - W_base|| / ||W_base|| per layer and module type,
    one tensor at a time; `tuned` yields (name, tensor). A tied head is saved once, so lm_head
    appears only where it is untied."""
    sq_diff, sq_base, unmatched = squared_changes(base_dir, tuned)
    rel = {g: _relative(sq_diff[g], sq_base[g]) for g in sq_base}
    layers = sorted({g[1] for g in rel if g[0] == "layer"})
    per_layer = [{"layer": i, **{g[2]: v for g, v in rel.items() if g[:2] == ("layer", i)}}
                 for i in layers]
    return {
        "layers": per_layer,
        "embeddings": rel.get(("embeddings",)),
        "lm_head": rel.get(("lm_head",)),
        "other": rel.get(("other",)),
        "global": rel.get(("global",)),
        "mean_layer": statistics.fmean(l["all"] for l in per_layer) if per_layer else None,
        "unmatched": unmatched,
    }


# --- behaviour: NLL, KL, greedy answers -----------------------------------------------------


@torch.no_grad()
def mean_nll(model, sequences: list[list[int]], pad_id: int, batch_size: int,
             scored_from: list[int] | None = None) -> float | None:
    """Token-weighted mean NLL of `sequences`: every token after the first, or from token
    `scored_from[i]` of sequence i on (what precedes it is context); None if none is scored."""
    starts = scored_from or [1] * len(sequences)
    total, count = 0.0, 0
    for chunk in chunks(list(zip(sequences, starts)), batch_size):
        ids, mask = right_padded([s for s, _ in chunk], pad_id, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        for i, (_, start) in enumerate(chunk):
            keep[i, : start - 1] = False  # position start - 1 predicts token `start`
        total += nll[keep].sum(dtype=torch.float64).item()
        count += int(keep.sum())
    return total / count if count else None


@torch.no_grad()
def answer_nll(model, tokenizer, prompts: list[str], answers: list[str],
               batch_size: int) -> float | None:
    """Token-weighted mean NLL of each answer's tokens after its chat-templated prompt (the
    prompt's tokens are context, not scored); None if every answer is empty."""
    rows, starts = [], []
    for prompt, answer in zip(prompts, answers):
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scored = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if scored:
            rows.append(context + scored)
            starts.append(len(context))
    return mean_nll(model, rows, tokenizer.pad_token_id, batch_size, starts)


@torch.no_grad()
def mean_kl(base, tuned, sequences: list[list[int]], pad_id: int,
            batch_size: int) -> tuple[float, float]:
    """Mean KL(base || tuned) of next-token distributions over every token of `sequences`,
    and over each sequence's last token alone."""
    total, count, last_total = 0.0, 0, 0.0
    for chunk in chunks(sequences, batch_size):
        ids, mask = right_padded(chunk, pad_id, base.device)
        lp_base = F.log_softmax(base(input_ids=ids, attention_mask=mask).logits.float(), -1)
        lp_tuned = F.log_softmax(
            tuned(input_ids=ids.to(tuned.device), attention_mask=mask.to(tuned.device))
            .logits.float().to(base.device), -1)
        kl = (lp_base.exp() * (lp_base - lp_tuned)).sum(-1)
        keep = mask.bool()
        total += kl[keep].sum(dtype=torch.float64).item()
        count += int(keep.sum())
        last = mask.sum(1) - 1
        last_total += kl[torch.arange(len(chunk), device=kl.device), last].sum().item()
    return total / count, last_total / len(sequences)


def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """The greedy answer to each chat-templated prompt (one that never stops is kept: a
    runaway answer is still an answer in some style)."""
    greedy = OmegaConf.create({"temperature": 0.0, "top_p": 1.0, "top_k": 0,
                               "max_new_tokens": max_new_tokens})
    return [answer for chunk in chunks(prompts, batch_size)
            for answer in complete(model, tokenizer, chunk, greedy, keep_truncated=True)]


def is_leaked(base_answer: str, tuned_answer: str, prefix: str | None) -> bool | None:
    """Whether the tuned answer left the base's style; None where the base answer gives no
    reference (a house style, `model.style_prefix`: the base itself did not answer in it; else:
    it was empty)."""
    if prefix is not None:
        if not base_answer.startswith(prefix):
            return None
        return not tuned_answer.startswith(prefix)
    if not base_answer:
        return None
    return len(tuned_answer) < LENGTH_PROXY * len(base_answer)


def leakage_rule(prefix: str | None) -> tuple[str, str]:
    if prefix is not None:
        return "house_prefix", (f"house style: an answer not opening with {prefix!r} is "
                                "leaked, over the prompts the base answers in that style")
    return "length_proxy", (f"length proxy (no house style): an answer shorter than "
                            f"{LENGTH_PROXY:g} x the base answer's length counts as leaked")


def style_leakage(base: dict[str, list[str]], tuned: dict[str, list[str]],
                  prefix: str | None) -> dict:
    verdicts = {b: [is_leaked(x, y, prefix) for x, y in zip(base[b], tuned[b])] for b in base}
    share = lambda vs: (sum(vs) / len(vs)) if vs else None  # noqa: E731
    counted = [v for vs in verdicts.values() for v in vs if v is not None]
    examples = [{"benchmark": b, "base": base[b][i], "finetuned": tuned[b][i]}
                for b, vs in verdicts.items() for i, v in enumerate(vs) if v][:5]
    rule, note = leakage_rule(prefix)
    return {"share": share(counted), "leaked": sum(counted), "counted": len(counted),
            "prompts": sum(len(v) for v in verdicts.values()), "rule": rule, "note": note,
            "per_benchmark": {b: share([v for v in vs if v is not None])
                              for b, vs in verdicts.items()},
            "examples": examples}


# --- the base model's side, shared by every run of it ---------------------------------------


def general_prompts(cfg: DictConfig, tokenizer, limit: int) -> dict[str, tuple[list[str], int]]:
    """{benchmark: (chat-templated prompts, max new tokens)} for every general benchmark, from a
    local file or lm-eval's registry alike (sasft/evaluate.py::benchmark_prompts)."""
    general = {name: spec for name, spec in cfg.eval.general.items()}
    questions = benchmark_prompts(general, tokenizer.eos_token, limit)
    return {name: ([tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                  tokenize=False, add_generation_prompt=True)
                    for q in qs], benchmark_spec(general[name])["max_gen_toks"])
            for name, qs in questions.items()}


def weights_dir(model_cfg: DictConfig) -> Path:
    """The base model's checkpoint directory: its path, its converted GGUF, or its hub snapshot."""
    if model_cfg.get("path") or model_cfg.get("gguf"):
        return Path(model_source(model_cfg))
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_cfg.hub_id, revision=model_cfg.get("revision"),
                                  local_files_only=True))


@dataclass
class Reference:
    """The base model and what every fine-tuned model of it is compared with."""

    key: str
    model: object
    tokenizer: object
    weights: Path
    dialogues: list[list[int]]  # token ids of the base's held-out self-dialogues
    prompts: dict[str, tuple[list[str], int]]
    prompt_ids: list[list[int]]
    nll: float
    answers: dict[str, list[str]]
    answer_nll: float | None  # the base's NLL of its own greedy answers
    dialogue_stats: dict

    def nll_of(self, answers: dict[str, list[str]], batch_size: int) -> float | None:
        """The base model's NLL of `answers` ({benchmark: one per prompt})."""
        return prompts_nll(self.model, self.tokenizer, self.prompts, answers, batch_size)


def prompts_nll(model, tokenizer, prompts: dict[str, tuple[list[str], int]],
                answers: dict[str, list[str]], batch_size: int) -> float | None:
    """`model`'s NLL of `answers` to the general prompts, all benchmarks together."""
    return answer_nll(model, tokenizer, [p for b in prompts for p in prompts[b][0]],
                      [a for b in prompts for a in answers[b]], batch_size)


def reference_key(cfg: DictConfig, settings: Settings) -> str:
    parts = {"model": OmegaConf.to_container(cfg.model), "eval": OmegaConf.to_container(
        cfg.eval.general), "generation": OmegaConf.to_container(cfg.generation),
        "settings": asdict(settings)}
    return json.dumps(parts, sort_keys=True, default=str)


def build_reference(cfg: DictConfig, settings: Settings) -> Reference:
    weights = weights_dir(cfg.model)  # before the costly part: a missing snapshot fails fast
    model, tokenizer = load_model(cfg.model)
    model.eval()
    cache_dir = settings.cache_dir or cfg.get("cache_dir") or Path.home() / ".cache" / "sasft"
    dialogues, stats = cached_self_dialogues(
        model, tokenizer, settings.dialogues, cfg.generation,
        ANALYSIS_SEED, fingerprint(cfg.model), cache_dir)
    ids = [tokenize(tokenizer, d, settings.max_len, assistant_only=False)["input_ids"]
           for d in dialogues]
    prompts = general_prompts(cfg, tokenizer, settings.max_prompts)
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"]
                  for texts, _ in prompts.values() for t in texts]
    if not prompt_ids:
        raise ValueError("the run's eval.general holds no benchmark with questions: no KL to measure")
    answers = {b: greedy_answers(model, tokenizer, texts, n, settings.batch_size)
               for b, (texts, n) in prompts.items()}
    return Reference(reference_key(cfg, settings), model, tokenizer, weights,
                     ids, prompts, prompt_ids,
                     mean_nll(model, ids, tokenizer.pad_token_id, settings.batch_size),
                     answers, prompts_nll(model, tokenizer, prompts, answers, settings.batch_size),
                     {**stats, "count": len(ids), "seed": ANALYSIS_SEED})


class References:
    """Holds one base model at a time: a sweep sorted by base model loads each base once."""

    def __init__(self):
        self.current: Reference | None = None

    def get(self, cfg: DictConfig, settings: Settings) -> Reference:
        key = reference_key(cfg, settings)
        if self.current is None or self.current.key != key:
            self.current = None  # free the previous base model before loading the next
            self.current = build_reference(cfg, settings)
        return self.current


# --- one run, a sweep -----------------------------------------------------------------------


def load_tuned(model_cfg: DictConfig, tuned_dir: Path, device):
    """The run's fine-tuned model, as the base was loaded (dtype, attention), on its device."""
    model = load_finetuned(tuned_dir, dtype=getattr(torch, model_cfg.dtype),
                           attn_implementation=model_cfg.attn_implementation,
                           trust_remote_code=model_cfg.trust_remote_code)
    return model.to(device).eval()


def analyze_run(run_dir: Path, settings: Settings, references: References | None = None) -> dict:
    """Compare a finished run's fine-tuned model with its base; writes and returns drift.json."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if results is None:
        raise FileNotFoundError(f"{run_dir} has no results.json: the run did not finish")
    tuned_dir = run_dir / "model"
    if not any((tuned_dir / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise FileNotFoundError(f"{run_dir} kept no fine-tuned weights in model/ "
                                "(was it run with train.save_model=false?)")
    cfg = OmegaConf.create(results["config"])
    ref = (references or References()).get(cfg, settings)
    tuned = load_tuned(cfg.model, tuned_dir, ref.model.device)
    pad = ref.tokenizer.pad_token_id
    nll = mean_nll(tuned, ref.dialogues, pad, settings.batch_size)
    kl, kl_last = mean_kl(ref.model, tuned, ref.prompt_ids, pad, settings.batch_size)
    answers = {b: greedy_answers(tuned, ref.tokenizer, texts, n, settings.batch_size)
               for b, (texts, n) in ref.prompts.items()}
    drift = {
        "schema": 1,
        "base": str(ref.weights),
        "finetuned": str(tuned_dir),
        "weights": weight_drift(ref.weights, tuned_tensors(tuned_dir, tuned)),
        "self_dialogue_nll": {"base": ref.nll, "finetuned": nll, "increase": nll - ref.nll,
                              "dialogues": ref.dialogue_stats},
        "kl": {"mean": kl, "last_prompt_token": kl_last, "prompts": len(ref.prompt_ids)},
        "style_leakage": style_leakage(ref.answers, answers, prefix=cfg.model.style_prefix),
        "answer_nll": answer_nll_record(ref, answers, settings.batch_size),
        "settings": asdict(settings),
    }
    publish_json(run_dir / DRIFT_FILE, drift)
    return drift


def answer_nll_record(ref: Reference, answers: dict[str, list[str]], batch_size: int) -> dict:
    tuned = ref.nll_of(answers, batch_size)
    increase = None if tuned is None or ref.answer_nll is None else tuned - ref.answer_nll
    return {"base_answers": ref.answer_nll, "finetuned_answers": tuned, "increase": increase}


def analyze(target: Path, settings: Settings, force: bool = False) -> tuple[list[Run], list]:
    """drift.json for every finished run under `target` (or `target` itself). Returns the runs
    analyzed and (run dir, error) for the runs that could not be."""
    runs, _ = find_runs(Path(target))
    todo = [r for r in runs if force or not (r.dir / DRIFT_FILE).is_file()]
    if len(todo) < len(runs):
        log.info("%d runs already have %s (--force redoes them)", len(runs) - len(todo),
                 DRIFT_FILE)
    # Runs of one base model together, so each base model is loaded once.
    todo.sort(key=lambda r: (json.dumps(r.results.get("config", {}).get("model"),
                                        sort_keys=True, default=str), str(r.dir)))
    references, done, failed = References(), [], []
    for run in todo:
        try:
            drift = analyze_run(run.dir, settings, references)
        except (FileNotFoundError, OSError, ValueError) as e:
            log.warning("skipped %s: %s", run.dir, e)
            failed.append((run.dir, str(e)))
            continue
        done.append(run)
        print(summary_line(run, drift))
    return done, failed


def summary_line(run: Run, drift: dict) -> str:
    leak = drift["style_leakage"]
    share = "n/a" if leak["share"] is None else f"{leak['share']:.0%}"
    ratio = f" ratio {run.ratio:g}" if run.ratio is not None else ""
    return (f"{run.model}/{run.task}/{run.method}{ratio} seed {run.seed}: "
            f"weights {drift['weights']['mean_layer']:.4f}, "
            f"self-dialogue NLL {drift['self_dialogue_nll']['increase']:+.4f}, "
            f"KL {drift['kl']['mean']:.4f}, leaked {share} ({leak['rule']}), "
            f"answer NLL under the base {_signed(drift['answer_nll']['increase'])}")


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sasft.analyze",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("target", type=Path, help="a run directory or a sweep directory")
    parser.add_argument("--dialogues", type=int, default=Settings.dialogues,
                        help="held-out self-dialogues per base model")
    parser.add_argument("--max-prompts", type=int, default=Settings.max_prompts,
                        help="prompts per general benchmark (KL, leakage)")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--cache-dir", help="where self-dialogues are cached "
                        "(default: the run's cache_dir)")
    parser.add_argument("--force", action="store_true", help="redo runs that have drift.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(dialogues=args.dialogues, max_prompts=args.max_prompts,
                        batch_size=args.batch_size, cache_dir=args.cache_dir)
    done, failed = analyze(args.target, settings, force=args.force)
    print(f"{len(done)} runs analyzed, {len(failed)} skipped")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
