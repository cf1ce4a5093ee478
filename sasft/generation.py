"""Self-dialogue generation: the model writes whole conversations, user turns included.

From its chat template's bare user-turn header the model samples a user message (the Magpie
trick), then answers it; more turns may follow. Batched with the KV cache and left padding;
cheap filters drop empty and duplicate dialogues, and count them; a turn that reaches the token
limit is dropped, or with `truncated: cut` kept up to its last full sentence. Rounds go on
while the yield allows (`min_yield`). Two backends take
the same prompts and return the same turns: `hf` (transformers' `generate`, the default) and
`vllm` (GPUs; imported only when chosen). Results are cached (sasft/cache.py) by the model's
fingerprint, the settings that shape the dialogues, the count and, with `per_seed`, the seed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from . import cache
from .errors import SasftError
from .data import Dialogue, read_jsonl, write_jsonl
from .decode import decode, picker
from .schema import TRAINING_SEED_MAX

log = logging.getLogger(__name__)

_SENTINEL = "\x00SASFT\x00"
# Settings that change the distribution the dialogues are drawn from. Batch size and backend
# only change which random draws come out (the sampler consumes the RNG in another order), not
# the distribution, so they are kept out of the key: a bigger batch, or vLLM on a GPU, still
# finds the cache. The meta file records which of them produced an entry.
_KEY_FIELDS = ("num_turns", "temperature", "top_p", "top_k", "max_new_tokens", "oversample",
               "truncated")
# The seed a shared set of self-dialogues is drawn with (generation.per_seed=false).
SHARED_SEED = 0
# Held-out self-dialogues (the KL probe's, EWC's Fisher's, the drift analysis's) come from
# streams of their own: torch seeds with the top bit of 32 set (torch's CPU generator keeps only
# the low 32 bits of a seed: 2**32 draws what 0 draws), while training seeds (the schema keeps
# them below 2**31) and their resumed draws stay below it. So whatever generation.per_seed says,
# a held-out set never shares draws or a cache file with a training mix.
MAX_TRAINING_SEED = TRAINING_SEED_MAX  # the schema's bound on a run's seed
HELD_OUT_BASE = MAX_TRAINING_SEED + 1  # 2**31
HELD_OUT_STREAMS = ("kl", "fisher", "analysis", "turns")


class Truncated(str):
    """The text of a turn that reached the token limit before its stop token."""


# One turn for each prompt (a Truncated one, or None, where it hit the limit); adds the tokens
# it generated to stats["tokens"].
Sampler = Callable[[list[str], Counter], list[str]]

# Where a sentence ends: after . ! ? (and a closing quote or bracket), before a space or the end;
# or at a line break.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)|\n")


def cut_at_sentence(text: str) -> str | None:
    """`text` up to the end of its last complete sentence; None if it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    cut = text[: ends[-1]].strip() if ends else ""
    return cut or None


class GenerationError(SasftError, RuntimeError):
    """Generation could not produce enough usable dialogues within its bounded attempts."""


def turn_header(tokenizer, history: Dialogue) -> str:
    """The text that opens the next user turn after `history`, exactly as the chat template
    writes it (a system prompt the template adds by default is part of it)."""
    text = tokenizer.apply_chat_template(
        history + [{"role": "user", "content": _SENTINEL}], tokenize=False
    )
    return text[: text.index(_SENTINEL)]


def stop_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def complete(model, tokenizer, prompts: list[str], cfg, stats: Counter | None = None,
             keep_truncated: bool = False) -> list[str | None]:
    """Sample one turn for each prompt in a single batched call; None where the turn was
    truncated (no stop token within max_new_tokens), or with `keep_truncated` the text so far
    (a `Truncated` string). A row that has stopped is padded while the others go on, and the
    call ends when every row has stopped. Adds the number of tokens
    generated (up to each row's stop token) to `stats["tokens"]`."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    batch = batch.to(model.device)
    stop = stop_ids(model, tokenizer)
    sampling = cfg.temperature > 0
    # Not cuDNN's attention (PyTorch's pick for bf16 on an H100): it builds an execution plan
    # for each new (batch, key length) shape, and generation meets new shapes all the time: a
    # longer key at every step, a batch that shrinks as the filters drop dialogues. On an H100,
    # 64 steps of a 0.5B model took 6.3 s on new shapes against 1.9 s without it.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        if cfg.get("drop_finished", True):  # each row leaves the batch when its turn ends
            out = decode(model, batch["input_ids"], batch["attention_mask"], cfg.max_new_tokens,
                         stop, tokenizer.pad_token_id,
                         picker(cfg.temperature, cfg.top_p, cfg.top_k) if sampling else None,
                         trim_padding=True)
        else:
            out = model.generate(
                **batch,
                do_sample=sampling,
                temperature=cfg.temperature if sampling else None,
                top_p=cfg.top_p if sampling else None,
                top_k=cfg.top_k if sampling else None,
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,  # whatever the checkpoint's config says: each step runs the new token only
            )
    texts: list[str | None] = []
    generated = 0
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        end = next((i for i, t in enumerate(row) if t in stop), None)
        generated += len(row) if end is None else end + 1
        if end is None and not keep_truncated:
            texts.append(None)
            continue
        text = tokenizer.decode(row[:end], skip_special_tokens=True).strip()
        texts.append(Truncated(text) if end is None else text)
    if stats is not None:
        stats["tokens"] += generated
    return texts


def hf_sampler(model, tokenizer, cfg) -> Sampler:
    """Turns from transformers' `generate` on the loaded model (`complete`)."""
    return lambda prompts, stats: complete(model, tokenizer, prompts, cfg, stats,
                                           keep_truncated=True)


def vllm_sampler(model, tokenizer, cfg, seed: int) -> Sampler:
    """The same turns through a vLLM engine over the checkpoint `model` was loaded from (it
    must be the base model, unchanged: generation runs before training). Prompts go in as the
    token ids the hf backend uses, and the tokens come back decoded by the same tokenizer, so
    the turns have the same form; a turn that ends by length is `Truncated`, as in `complete`."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise GenerationError(
            "generation.backend=vllm needs vLLM: pip install -e '.[vllm]' (on a CUDA machine), "
            f"or use generation.backend=hf ({e})"
        ) from None
    stop = stop_ids(model, tokenizer)
    llm = LLM(
        model=model.name_or_path,  # the directory or hub id the in-memory model came from
        tokenizer=model.name_or_path,
        revision=getattr(model.config, "_commit_hash", None),  # the hub commit hf loaded, if any
        seed=seed,
        dtype=str(model.dtype).removeprefix("torch."),
        # The loaded model stays on the same GPU and trains next: leave it its share.
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
    )
    sampling = cfg.temperature > 0
    params = SamplingParams(
        temperature=cfg.temperature if sampling else 0.0,  # 0: greedy, as in `complete`
        top_p=cfg.top_p if sampling else 1.0,
        top_k=(cfg.top_k or -1) if sampling else -1,  # vLLM's "no top-k" is -1
        max_tokens=cfg.max_new_tokens,
        stop_token_ids=stop,
    )

    def sample(prompts: list[str], stats: Counter) -> list[str]:
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        texts: list[str] = []
        for request in llm.generate([{"prompt_token_ids": p} for p in ids], params,
                                    use_tqdm=False):
            turn = request.outputs[0]
            tokens = list(turn.token_ids)
            stats["tokens"] += len(tokens)
            if tokens and tokens[-1] in stop:
                tokens.pop()
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            texts.append(text if turn.finish_reason == "stop" else Truncated(text))
        return texts

    return sample


def make_sampler(model, tokenizer, cfg, seed: int) -> tuple[Sampler, int | None]:
    """The configured backend's sampler, and how many dialogues to hand it at once: the hf
    backend pads a batch of `cfg.batch_size`; vLLM schedules its own batches, so it gets all.
    (The backend's name is checked with the config, in sasft/schema.py.)"""
    if cfg.backend == "vllm":
        return vllm_sampler(model, tokenizer, cfg, seed), None
    return hf_sampler(model, tokenizer, cfg), cfg.batch_size


def generate_batch(sample: Sampler, tokenizer, size: int, cfg
                   ) -> tuple[list[Dialogue | None], Counter]:
    """`size` dialogues of `cfg.num_turns` turns; a dropped one is None, its reason counted
    (and the tokens generated, under "tokens"). "truncated" counts the turns that reached the
    token limit, "cut" those of them kept up to their last sentence (`cfg.truncated == "cut"`)."""
    dialogues: list[Dialogue | None] = [[] for _ in range(size)]
    drops: Counter = Counter()
    for _ in range(cfg.num_turns):
        for role in ("user", "assistant"):
            alive = [i for i, d in enumerate(dialogues) if d is not None]
            if not alive:
                break
            if role == "user":
                prompts = [turn_header(tokenizer, dialogues[i]) for i in alive]
            else:
                prompts = [
                    tokenizer.apply_chat_template(dialogues[i], tokenize=False,
                                                  add_generation_prompt=True)
                    for i in alive
                ]
            drops["turns"] += len(prompts)
            for i, text in zip(alive, sample(prompts, drops)):
                if text is None:  # truncated, its text unknown
                    text = Truncated("")
                if isinstance(text, Truncated):
                    drops["truncated"] += 1
                    text = cut_at_sentence(text) if cfg.truncated == "cut" else None
                    if text is None:
                        dialogues[i] = None
                        continue
                    text = Truncated(text)  # cut: marked, so that what is trained on is counted
                    drops["cut"] += 1
                if not text:
                    drops["empty"] += 1
                    dialogues[i] = None
                else:
                    dialogues[i].append({"role": role, "content": text})
    return dialogues, drops


def read_progress(path: Path | None) -> list[Dialogue]:
    """The dialogues an earlier, unfinished generation kept (one per line, appended as they were
    kept); a line cut off by a kill is ignored."""
    if path is None or not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            kept.append(json.loads(line)["messages"])
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # the last line, half-written when the process was killed
    return kept


def generate_self_dialogues(model, tokenizer, count: int, cfg, seed: int,
                            progress: Path | None = None) -> tuple[list, dict]:
    """Exactly `count` usable, distinct dialogues, or a GenerationError once the share of
    generated dialogues kept falls below `cfg.min_yield`. Each round asks for what is still
    missing divided by the yield observed so far (the first by `cfg.oversample`), so a
    generation whose filters drop half its dialogues takes two rounds, not a fixed number of
    tries. Returns the dialogues and the filter statistics. With
    `progress`, every kept dialogue is appended to that file as soon as it is kept, and a call
    that finds the file continues from its dialogues: a failure or an interruption loses none."""
    kept: list[Dialogue] = read_progress(progress)[:count]
    seen: set[str] = {json.dumps(d) for d in kept}
    stats: Counter = Counter({"resumed": len(kept)} if kept else {})
    # A resumed generation draws on from a seed of its own, not the first run's draws again.
    torch.manual_seed(draw_seed(seed, len(kept)))
    was_training = model.training
    model.eval()
    sample, batch_size = make_sampler(model, tokenizer, cfg, seed)
    bar = tqdm(total=count, initial=len(kept), desc="self-dialogues", unit="dlg")
    log_file = progress.open("a", encoding="utf-8") if progress is not None else None
    start_kept = len(kept)
    try:
        factor = cfg.oversample
        while len(kept) < count:
            todo = math.ceil((count - len(kept)) * factor)
            step = batch_size or todo
            for start in range(0, todo, step):
                batch, drops = generate_batch(sample, tokenizer, min(step, todo - start), cfg)
                stats.update(drops)
                stats["generated"] += len(batch)
                for dialogue in batch:
                    if dialogue is None:
                        continue
                    key = json.dumps(dialogue)
                    if key in seen:
                        stats["duplicate"] += 1
                        continue
                    seen.add(key)
                    if len(kept) < count:
                        kept.append(dialogue)
                        bar.update(1)
                        if log_file is not None:
                            log_file.write(json.dumps({"messages": dialogue}) + "\n")
                            log_file.flush()
                if len(kept) >= count:
                    break
            stats["rounds"] += 1
            observed = (len(kept) - start_kept) / stats["generated"]
            if len(kept) < count and observed < cfg.min_yield:
                break
            # What the next round needs, at the yield seen so far (at most 1 / min_yield times).
            factor = 1 / max(observed, cfg.min_yield)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        model.train(was_training)
    if len(kept) < count:
        raise GenerationError(
            f"only {len(kept)} usable self-dialogues of the {count} needed: after "
            f"{stats['rounds']} rounds the yield fell below generation.min_yield="
            f"{cfg.min_yield}; dropped: {dict(stats)}. They are kept: running again continues "
            "from them. Check the model's chat template, or raise generation.max_new_tokens / "
            "temperature, or set generation.truncated=cut."
        )
    stats["kept"] = len(kept)
    if stats["turns"]:
        stats["truncation_rate"] = round(stats["truncated"] / stats["turns"], 4)
    fresh = kept[start_kept:]  # resumed dialogues were read back from disk, unmarked
    lengths = {f"{role}_turns": turn_stats(tokenizer, fresh, role, cfg.max_new_tokens)
               for role in ("user", "assistant")}
    return ([[{"role": m["role"], "content": str(m["content"])} for m in d] for d in kept],
            dict(stats) | lengths)


def _quantiles(values: list[int]) -> dict:
    values = sorted(values)
    at = {"q10": 0.1, "q25": 0.25, "median": 0.5, "q75": 0.75, "q90": 0.9}
    return {k: values[min(len(values) - 1, round(q * (len(values) - 1)))] for k, q in at.items()} \
        | {"max": values[-1], "mean": round(sum(values) / len(values), 1)}


def turn_stats(tokenizer, dialogues: list[Dialogue], role: str, limit: int) -> dict | None:
    """The `role` turns of the dialogues kept, as trained on: how many, the share cut at their
    last sentence after reaching `limit` tokens, and their lengths in tokens; and the lengths as
    the model wrote them (a cut turn counts `limit`: at least that long), the base model's own
    answer lengths where few are cut."""
    turns = [m["content"] for d in dialogues for m in d if m["role"] == role]
    if not turns:
        return None
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in turns]
    cut = [isinstance(t, Truncated) for t in turns]
    return {"turns": len(turns), "cut_share": round(sum(cut) / len(turns), 4),
            "tokens": _quantiles(lengths),
            "tokens_written": _quantiles([limit if c else n for n, c in zip(lengths, cut)])}


def held_out_seed(stream: str) -> int:
    """The seed of a held-out stream (one of HELD_OUT_STREAMS), 2**24 apart from the next."""
    return HELD_OUT_BASE + HELD_OUT_STREAMS.index(stream) * 2**24


def draw_seed(seed: int, resumed: int) -> int:
    """The torch seed of a generation that already kept `resumed` dialogues: its own draws, not
    the first attempt's again, in the namespace (training or held-out) of `seed`."""
    namespace = seed & HELD_OUT_BASE
    return namespace | (seed + 1_000_003 * resumed) % HELD_OUT_BASE


def generation_seed(cfg, seed: int) -> int:
    """The seed the self-dialogues are drawn with: a held-out stream's own; for a training mix
    the run's, or one shared by every seed (per_seed=false)."""
    if seed >= HELD_OUT_BASE:
        return seed
    if not 0 <= seed <= MAX_TRAINING_SEED:
        raise SasftError(f"seed must be in [0, {MAX_TRAINING_SEED}], got {seed}")
    return seed if cfg.per_seed else SHARED_SEED


def cache_path(fingerprint: str, count: int, cfg, seed: int, cache_dir: str | Path) -> Path:
    """Where the self-dialogues of these settings are kept (`seed`: the generation seed)."""
    name = cache.key({"model": fingerprint, "count": count, "seed": seed,
                      **{k: cfg[k] for k in _KEY_FIELDS}})
    return Path(cache_dir) / "self_dialogues" / f"{name}.jsonl"


def block_seed(seed: int, block: int) -> int:
    """The seed block `block` of a seed's stream is drawn with (block 0: the seed itself), in the
    namespace (training or held-out) of `seed`."""
    namespace = seed & HELD_OUT_BASE
    return namespace | (seed + 7_919_993 * block) % HELD_OUT_BASE


def cached_self_dialogues(model, tokenizer, count: int, cfg, seed: int, fingerprint: str,
                          cache_dir: str | Path) -> tuple[list[Dialogue], dict]:
    """Self-dialogues from the cache (sasft/cache.py), generated first if absent. With
    `cfg.block`, a count above it is the first `count` distinct dialogues of the seed's stream
    of blocks (each `cfg.block` dialogues drawn with `block_seed`, cached on its own): a larger
    mix ratio extends a smaller one's dialogues instead of drawing all of them again."""
    if count == 0:
        return [], {"kept": 0, "cached": False}
    seed = generation_seed(cfg, seed)
    size = cfg.get("block")
    if not size or count <= size:
        return _cached_set(model, tokenizer, count, cfg, seed, fingerprint, cache_dir)
    kept, seen, parts = [], set(), []
    while len(kept) < count:
        if len(parts) > 2 * math.ceil(count / size):  # blocks of nothing but repeats
            raise GenerationError(f"{len(parts)} blocks of {size} self-dialogues held only "
                                  f"{len(kept)} distinct ones of the {count} needed")
        block, stats = _cached_set(model, tokenizer, size, cfg, block_seed(seed, len(parts)),
                                   fingerprint, cache_dir)
        parts.append(stats)
        for dialogue in block:
            key = json.dumps(dialogue)
            if key not in seen and len(kept) < count:
                seen.add(key)
                kept.append(dialogue)
    return kept, block_stats(tokenizer, kept, parts)


def block_stats(tokenizer, kept: list[Dialogue], parts: list[dict]) -> dict:
    """One generation's statistics from its blocks': counts summed, each role's cut share
    weighted by its turns and its lengths (as trained) over the dialogues kept; every block's
    own statistics under "blocks"."""
    merged: Counter = Counter()
    for part in parts:
        merged.update({k: v for k, v in part.items() if isinstance(v, int)
                       and not isinstance(v, bool)})
    merged["kept"] = len(kept)
    out = dict(merged) | {"cached": all(p.get("cached") for p in parts), "blocks": parts}
    if merged["turns"]:
        out["truncation_rate"] = round(merged["truncated"] / merged["turns"], 4)
    for role in ("user", "assistant"):
        per_block = [p[f"{role}_turns"] for p in parts if p.get(f"{role}_turns")]
        turns = [m["content"] for d in kept for m in d if m["role"] == role]
        if per_block and turns:
            total = sum(b["turns"] for b in per_block)
            lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in turns]
            out[f"{role}_turns"] = {
                "turns": len(turns),
                "cut_share": round(sum(b["cut_share"] * b["turns"] for b in per_block) / total, 4),
                "tokens": _quantiles(lengths)}
    return out


def _cached_set(model, tokenizer, count: int, cfg, seed: int, fingerprint: str,
                cache_dir: str | Path) -> tuple[list[Dialogue], dict]:
    """`count` dialogues drawn with `seed`, from the cache or generated. The entry is the
    dialogues and a `.meta.json` beside them, published last: it marks the entry made."""
    settings = {k: cfg[k] for k in _KEY_FIELDS}
    path = cache_path(fingerprint, count, cfg, seed, cache_dir)

    progress = path.with_suffix(".partial.jsonl")  # what an unfinished generation kept

    def make() -> dict:
        dialogues, stats = generate_self_dialogues(model, tokenizer, count, cfg, seed, progress)
        write_jsonl(path, [{"messages": d} for d in dialogues])
        progress.unlink(missing_ok=True)
        log.info("generated %d self-dialogues (%s) -> %s", count, stats, path)
        return {"model": fingerprint, "count": count, "seed": seed, "stats": stats,
                "settings": settings,
                "produced_by": {"backend": cfg.backend, "batch_size": cfg.batch_size}}

    meta, made = cache.once(path.with_suffix(".meta.json"), make, cache.publish_json,
                            read=lambda p: json.loads(p.read_text()))
    if not made:
        log.info("reusing %d cached self-dialogues from %s", count, path)
    return [r["messages"] for r in read_jsonl(path)], {**meta["stats"], "cached": not made}
