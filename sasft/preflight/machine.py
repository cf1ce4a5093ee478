"""Checks of the machine and its surroundings: storage that jobs write and share, W&B's
credentials, the GPUs of a local run, NLTK's data for IFEval."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .check import Check, failed, ok, warn

# Filesystems every node of a cluster mounts; a path on one of them is shared.
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph",
              "cephfs", "glusterfs", "panfs", "wekafs", "orangefs", "pvfs2", "afs", "9p",
              "fuse.glusterfs", "fuse.cephfs", "fuse.beegfs", "fuse.sshfs", "fuse.juicefs"}


def _existing(path: Path) -> Path:
    """The deepest part of `path` that exists (the place a job's mkdir starts from)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def filesystem(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding `path`, from /proc/self/mounts."""
    target = os.path.realpath(_existing(path))
    best = ("/", "unknown")
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fields[2])
    return best


def _node_local(path: Path) -> bool:
    """A temporary directory: each node has its own."""
    target = os.path.realpath(_existing(path))
    roots = ["/tmp", "/var/tmp", "/dev/shm", os.environ.get("TMPDIR"),
             os.environ.get("SLURM_TMPDIR")]
    return any(target == r or target.startswith(r.rstrip("/") + "/")
               for r in (os.path.realpath(r) for r in roots if r))


def writable_problem(path: Path) -> str | None:
    """Why a job could not create and write `path`, or None: tried in its deepest existing
    part with a directory made and removed at once."""
    start = _existing(path)
    if not start.is_dir():
        return f"{start} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sasft-preflight-", dir=start))
    except OSError as e:
        return f"{start} is not writable ({e.strerror})"
    return None


def check_storage(what: str, path: str, fix_field: str, nodes: list[str] | None) -> Check:
    """`path` writable; for SLURM (`nodes`: the partition's node names) also seen by every node,
    as far as that can be told here: a network filesystem is shared, a temporary directory is
    not, another local disk is shared only if this machine exports it."""
    path = Path(path).absolute()
    problem = writable_problem(path)
    fix = f"{fix_field} at a directory you can write" + (", on storage every node mounts"
                                                          if nodes is not None else "")
    if problem:
        return failed(what, f"{path}: {problem}", fix)
    if nodes is None:
        return ok(what, f"{path} (writable)")
    mount, fstype = filesystem(path)
    from .slurm import this_machine

    if nodes and set(nodes) <= this_machine():
        return ok(what, f"{path} (writable; {fstype}, and the partition's only node is this "
                        "machine)")
    if fstype in NETWORK_FS:
        return ok(what, f"{path} (writable; shared: {fstype} at {mount})")
    if _node_local(path) or fstype in ("tmpfs", "ramfs"):
        return failed(what, f"{path} is node-local ({fstype} at {mount}): jobs on other nodes "
                            "cannot see it", fix)
    return warn(what, f"{path} is on a local {fstype} disk ({mount}): jobs on other nodes see it "
                      "only if this machine exports it", f"if they do not: {fix}")


def check_wandb(cfg) -> Check:
    """W&B's mode and, online, whether wandb finds an API key the way a run asks for it."""
    what = "W&B"
    if not cfg.enabled or cfg.mode == "disabled":
        return ok(what, "off")
    if cfg.mode == "offline":
        return ok(what, "offline: runs are logged in their directories; `wandb sync` uploads "
                        "them later")
    import wandb

    if wandb.login(prompt=False, verify=False):
        return ok(what, f"online, API key found (project {cfg.project})")
    return warn(what, "online, but no API key: runs fall back to logging offline",
                "`wandb login` (or WANDB_API_KEY), or WANDB_MODE=offline to mean it")


def check_local_gpus(needs_gpu: bool) -> Check:
    """The GPUs a run on this machine (a local launch) gets."""
    what = "GPUs here"
    import torch

    count = torch.cuda.device_count()
    if count:
        return ok(what, f"{count} ({torch.cuda.get_device_name(0)}); a run uses one")
    if needs_gpu:
        return warn(what, "none: a real model trains on this machine's CPU (days)",
                    "run on a GPU machine, or submit with hydra/launcher=slurm")
    return ok(what, "none; the toy and GGUF models run on the CPU")


def check_nltk() -> Check:
    from ..evaluate import missing_nltk_data

    problem = missing_nltk_data()
    what = "NLTK data (IFEval)"
    return failed(what, problem) if problem else ok(what, "punkt_tab found")
