"""What the SLURM cluster offers, asked of `sinfo`, `sacctmgr` and `scontrol` on the login node:
the partitions (default, nodes, GPUs per node) and the user's accounts; and whether the
launcher's request (conf/hydra/launcher/slurm.yaml) fits them."""

from __future__ import annotations

import functools
import getpass
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field

from .check import Check, failed, ok, warn

SLURM_LAUNCHER = "SlurmLauncher"  # hydra-submitit-launcher's class; its local twin is not one


def is_slurm(launcher) -> bool:
    return str(launcher.get("_target_", "")).endswith(SLURM_LAUNCHER)


class SlurmUnavailable(Exception):
    pass


def _run(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmUnavailable(f"{cmd[0]} not found: this machine is not a SLURM login node")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` did not answer in 30 s") from None
    if done.returncode != 0:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {' '.join(done.stderr.split())}")
    return done.stdout


@dataclass
class Partition:
    name: str
    default: bool = False
    up: bool = True
    gpus_per_node: int = 0   # the most any of its nodes has
    nodes: list[str] = field(default_factory=list)


def gpus_in_gres(gres: str) -> int:
    """GPUs in one node's GRES as sinfo prints it: "gpu:a100:4(S:0-1),shard:8" -> 4."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from `sinfo -h -o %P|%a|%G|%N` (one line per partition and node kind)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        if line.count("|") != 3:
            continue
        name, avail, gres, nodes = line.split("|")
        part = parts.setdefault(name.rstrip("*"), Partition(name.rstrip("*")))
        part.default |= name.endswith("*")
        part.up = avail.strip() == "up"
        part.gpus_per_node = max(part.gpus_per_node, gpus_in_gres(gres))
        part.nodes.append(nodes.strip())
    return parts


@functools.lru_cache(maxsize=1)
def partitions() -> dict[str, Partition]:
    return parse_sinfo(_run("sinfo", "-h", "-o", "%P|%a|%G|%N"))


def node_names(partition: Partition) -> list[str]:
    """The partition's nodes by name (`scontrol show hostnames` expands "node[01-04]")."""
    names = []
    for expr in partition.nodes:
        names += _run("scontrol", "show", "hostnames", expr).split()
    return names


def this_machine() -> set[str]:
    host = socket.gethostname()
    return {host, host.split(".")[0], socket.getfqdn(), "localhost"}


def chosen_partition(launcher) -> Partition:
    """The partition the launcher submits to (the cluster's default if it names none); raises
    SlurmUnavailable, or LookupError saying which partitions there are."""
    parts = partitions()
    name = launcher.get("partition")
    if name is None:
        default = [p for p in parts.values() if p.default]
        if not default:
            raise LookupError(f"the cluster has no default partition (partitions: "
                              f"{', '.join(parts)})")
        return default[0]
    if name not in parts:
        names = ", ".join(p.name + ("*" if p.default else "") for p in parts.values())
        raise LookupError(f"partition {name!r} does not exist (partitions: {names})")
    return parts[name]


def check_partition(launcher) -> Check:
    what = "SLURM partition"
    try:
        part = chosen_partition(launcher)
    except SlurmUnavailable as e:
        return failed(what, str(e), "submit from the cluster's login node, or run the sweep "
                                    "here with hydra/launcher=local")
    except LookupError as e:
        return failed(what, str(e), "set hydra.launcher.partition to one of them")
    chosen = "the default partition " if launcher.get("partition") is None else "partition "
    if not part.up:
        return warn(what, f"{chosen}{part.name} is not up: jobs wait until it is")
    return ok(what, f"{chosen}{part.name} ({', '.join(part.nodes)}"
                    f"{f', {part.gpus_per_node} GPUs a node' if part.gpus_per_node else ''})")


def check_account(launcher) -> Check:
    what = "SLURM account"
    account = launcher.get("account")
    user = getpass.getuser()
    try:
        mine = sorted({a for a in _run("sacctmgr", "-n", "-P", "show", "assoc", f"user={user}",
                                       "format=account").split() if a})
    except SlurmUnavailable as e:
        if account is None:
            return ok(what, "none set: jobs are charged to your default account")
        return warn(what, f"cannot list {user}'s accounts to check {account!r} ({e})")
    if account is None:
        return ok(what, f"none set: jobs are charged to your default account (yours: "
                        f"{', '.join(mine) or 'none listed'})")
    if not mine:
        return warn(what, f"sacctmgr lists no accounts for {user}, so {account!r} is not "
                          "confirmed")
    if account not in mine:
        return failed(what, f"{user} has no account {account!r} (yours: {', '.join(mine)})",
                      "set hydra.launcher.account to one of yours")
    return ok(what, f"{account}")


def requested_gpus(launcher) -> int:
    """GPUs a job asks for per node: gpus_per_node, or a gpu GRES (launcher.gres, or gres in
    additional_parameters)."""
    if launcher.get("gpus_per_node"):
        return int(launcher.gpus_per_node)
    gres = launcher.get("gres") or (launcher.get("additional_parameters") or {}).get("gres")
    return gpus_in_gres(str(gres)) if gres else 0


def check_gpus(launcher, needs_gpu: bool) -> Check:
    what = "SLURM GPUs"
    asked = requested_gpus(launcher)
    try:
        part = chosen_partition(launcher)
    except (SlurmUnavailable, LookupError) as e:
        return failed(what, f"cannot compare the request ({asked} GPUs a job) with the "
                            f"partition: {e}")
    if asked > part.gpus_per_node:
        has = f"at most {part.gpus_per_node}" if part.gpus_per_node else "no"
        return failed(what, f"each job asks for {asked} GPU{'s' if asked > 1 else ''}, but "
                            f"partition {part.name}'s nodes have {has} GPUs (GRES)",
                      f"hydra.launcher.gpus_per_node={min(1, part.gpus_per_node) or 'null'}, "
                      "or a GPU partition (hydra.launcher.partition=...)")
    if asked == 0:
        if needs_gpu:
            return warn(what, "none requested, so real models train on the CPU (days)",
                        "hydra.launcher.gpus_per_node=1")
        return ok(what, "none requested; the toy and GGUF models run on the CPU")
    tasks = int(launcher.get("tasks_per_node") or 1)
    if asked > tasks:
        return warn(what, f"{asked} GPUs a job but {tasks} process: sasft trains on one device "
                          "a process, the others idle", "hydra.launcher.gpus_per_node=1")
    return ok(what, f"{asked} a job; partition {part.name} has up to {part.gpus_per_node} a node")
