"""Several processes, one experiment (`torchrun` / `accelerate launch`).

Training is the Trainer's data parallelism. Everything around it runs once, on rank 0, while
the other ranks wait for its answer: the run's ownership, base scores, auxiliary data,
evaluation, the record. `on_main` is the one way to do that; an error on rank 0 reaches every
rank, so none waits forever. A single process is world size 1 and runs everything itself.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import SasftError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group (gloo on CPUs, nccl on GPUs) before any shared work;
    the Trainer later finds it initialized and trains in it."""
    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Rank 0 may evaluate or generate for a long time while the others wait.
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=timedelta(hours=6))


def on_main(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on rank 0, its result on every rank. An exception on rank 0 is
    raised there and, as a RuntimeError naming it, on the others."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    error = None
    if is_main():
        try:
            box = [("ok", fn(*args, **kwargs))]
        except BaseException as e:  # noqa: BLE001  (re-raised below, after telling the others)
            status = "user error" if isinstance(e, SasftError) else "error"
            error, box = e, [(status, f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status != "ok":
        raise (SasftError if status == "user error" else RuntimeError)(f"rank 0: {value}")
    return value
