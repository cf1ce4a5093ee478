"""A run's directory: its identity, and its one owner.

Identity. A run is named by everything in its config that can change its result. The
directory is `<model>/<task>/<method>/<peft>[_ratio<r>]_seed<s>-<hash>`: the readable fields,
then a hash of the whole identity (`identity.json` in the directory lists what it stands for).
Two commands that differ in any identity field get two directories; the same command gets the
same one, so a sweep skips finished runs and a requeued job finds its own checkpoints. A
directory is reused only by the identity that made it: anything else is refused, naming the
fields that differ.

Owner. A run holds a lock on its directory while it works (`.owner.lock`, with host, pid and
SLURM job id in `owner.json`). The lock is the kernel's (flock), so it dies with its process:
a killed or crashed owner never keeps it. A second launch of the same run waits up to
`owner_wait_s` for the owner to finish, then reports its result, or gives up naming the owner.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from . import cache
from .cache import publish_json
from .errors import ConfigError, SasftError
from .paths import PACKAGE_DIR
from .record import read_results

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
OWNER_FILE = "owner.json"

# Config fields that cannot change a run's result, so they are not part of its identity. The
# one list: everything else names the run. A field here is excluded with all it holds.
NOT_IDENTITY = (
    "hydra",                # where Hydra writes, the launcher's resources
    "rerun", "owner_wait_s", "allow_world_mismatch",  # how this launch behaves
    "cache_dir",            # where shared artifacts are kept (their keys say what they are)
    "sweep_name",           # which folder a sweep writes into
    "mix_ratio",            # flows into method.mix_ratio for the methods that mix data
    "wandb",                # where the run is logged
    "train.logging_steps", "train.save_steps", "train.save_model",  # what is logged or kept
    "eval.batch_size", "eval.max_batch_size", "eval.drop_finished",  # throughput only
    "train.labelled_logits_only",  # the same loss, fewer logits: throughput only
    "eval.examples",        # how many forgotten items a run keeps to show
    # Throughput and inspection only. The self-dialogue cache is keyed without them too, so a
    # run finds the same dialogues whatever its batch size or backend (sasft/generation.py).
    "generation.batch_size", "generation.backend", "generation.sample_size",
    "generation.vllm_gpu_memory_utilization", "generation.drop_finished",
    "generation.min_yield",  # only decides when a generation gives up with an error
)
HASH_LENGTH = 8


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _excluded(key: str) -> bool:
    return any(key == field or key.startswith(field + ".") for field in NOT_IDENTITY)


def _portable(value, cache_dir: str | None):
    """Paths inside the installed package or the cache, written relative to them, so a clone
    elsewhere or another cache_dir names the same run the same way."""
    if not isinstance(value, str):
        return value
    for root, marker in ((str(PACKAGE_DIR), "<sasft>"), (cache_dir, "<cache_dir>")):
        if root and (value == root or value.startswith(root.rstrip("/") + "/")):
            return marker + value[len(root.rstrip("/")):]
    return value


def identity(cfg: DictConfig | dict) -> dict:
    """{dotted field: value} of every identity field of a config, resolved and sorted."""
    if isinstance(cfg, DictConfig):
        # Each top-level node on its own: resolving the whole root would resolve hydra.run.dir,
        # which is computed from this very function.
        plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
                 else cfg[k] for k in cfg if k != "hydra"}
    else:
        plain = dict(cfg)
    cache_dir = plain.get("cache_dir")
    flat = _flatten(plain)
    return {k: _portable(flat[k], cache_dir) for k in sorted(flat) if not _excluded(k)}


def short_identity(cfg: DictConfig) -> dict:
    """What a person calls the run: model, task, method, mix ratio (None for a method that mixes
    nothing), PEFT (full fine-tuning or LoRA: never mixed) and seed. The directory's name, the
    W&B run's name and tags, and results.json's `run` are made from it; `identity` (every field
    that can change the result) decides which directory a run owns."""
    return {"model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name,
            "mix_ratio": cfg.method.get("mix_ratio"), "peft": cfg.peft.name, "seed": cfg.seed}


def identity_hash(fields: dict) -> str:
    return cache.key(fields)[:HASH_LENGTH]


def variant(fields: dict) -> dict:
    """The identity without the seed: runs of one variant are repeats of one experiment."""
    return {k: v for k, v in fields.items() if k != "seed"}


def run_path(cfg: DictConfig) -> str:
    """The run's directory below outputs/ (or a sweep's directory)."""
    who = short_identity(cfg)
    ratio = f"_ratio{who['mix_ratio']}" if who["mix_ratio"] is not None else ""
    return (f"{who['model']}/{who['task']}/{who['method']}/"
            f"{who['peft']}{ratio}_seed{who['seed']}-{identity_hash(identity(cfg))}")



# --- reuse ----------------------------------------------------------------------------------


class RunMismatch(ConfigError):
    """The directory holds a run of another config."""


def differences(stored: dict, current: dict) -> list[str]:
    keys = sorted(set(stored) | set(current))
    missing = "(absent)"
    return [f"{k}: {stored.get(k, missing)!r} there, {current.get(k, missing)!r} now"
            for k in keys if stored.get(k, missing) != current.get(k, missing)]


def stored_identity(run_dir: Path) -> dict | None:
    """The identity the directory was made for: its identity.json, or, for a directory that
    has only a results.json (another version, or planted), the identity of its config."""
    path = run_dir / IDENTITY_FILE
    if path.is_file():
        return json.loads(path.read_text())["fields"]
    results = read_results(run_dir)
    if results is not None:
        return identity(results.get("config", {}))
    return None


def check_identity(run_dir: Path, fields: dict) -> None:
    """Refuse a directory made for another identity; name the directory for this one."""
    stored = stored_identity(run_dir)
    if stored is not None and stored != fields:
        diff = differences(stored, fields)
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise RunMismatch(f"{run_dir} holds a run of another config ({shown}). Its results and "
                          "checkpoints are not this run's: choose another directory, or delete "
                          "that one")
    publish_json(run_dir / IDENTITY_FILE, {"hash": identity_hash(fields), "fields": fields})


# --- the owner ------------------------------------------------------------------------------


class RunBusy(SasftError, RuntimeError):
    """Another process owns the run and did not finish within owner_wait_s."""


def owner_text(run_dir: Path) -> str:
    try:
        o = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return "another process (no owner.json)"
    job = f", SLURM job {o['slurm_job_id']}" if o.get("slurm_job_id") else ""
    return f"pid {o['pid']} on {o['host']}{job}, since {o['since']}"


@contextmanager
def owned(run_dir: Path, wait_s: float | None):
    """Hold the run's directory for the duration; wait up to `wait_s` seconds (None: forever)
    for a current owner, then raise RunBusy naming it."""
    lock = FileLock(str(run_dir / ".owner.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = owner_text(run_dir)
        log.warning("%s is held by %s; waiting up to %s for it", run_dir, who,
                    "ever" if wait_s is None else f"{wait_s:g} s")
        try:
            lock.acquire(timeout=-1 if wait_s is None else wait_s)
        except Timeout:
            raise RunBusy(f"{run_dir} is held by {who}, still running after {wait_s:g} s "
                          "(owner_wait_s); not started twice") from None
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                 "since": datetime.datetime.now().isoformat(timespec="seconds")}
        (run_dir / OWNER_FILE).write_text(json.dumps(owner))
        yield
    finally:
        (run_dir / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


# --- a refused run leaves nothing ---------------------------------------------------------------


def remove_unclaimed(run_dir: Path) -> None:
    """Remove the directory Hydra made for a run refused before claiming it, and the empty
    folders above it up to the working directory. Only one that holds nothing but Hydra's own
    files (.hydra/, the job's log): a directory with anything else is another run's."""
    if not run_dir.is_dir() or any(p.name != ".hydra" and p.suffix != ".log"
                                   for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    _remove_empty_parents(run_dir)


def remove_unstarted_sweep(sweep_dir: Path) -> None:
    """Remove a sweep's directory that holds only Hydra's record of the sweep (multirun.yaml):
    its first job was refused, so no run of it exists."""
    if sweep_dir.is_dir() and [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
        shutil.rmtree(sweep_dir)
        _remove_empty_parents(sweep_dir)


def _remove_empty_parents(path: Path) -> None:
    cwd = Path.cwd().resolve()
    for parent in path.resolve().parents:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()
