"""A sweep's finished runs in one file, without their weights: to carry a sweep's results from
the cluster to a laptop, to keep the runs a report was made from beside it, or to go on with a
sweep on another machine (unpacked into the sweep's directory, a finished run is found
finished and not rerun: sasft/cli.py's `claim`).

    python -m sasft.report.archive pack multirun/toy_grid toy_grid.tar.xz
    python -m sasft.report.archive unpack toy_grid.tar.xz multirun/toy_grid

A run's `model/` and `checkpoints/` stay behind (gigabytes for a real model): run
`python -m sasft.analyze` before packing, since its drift.json needs the weights. Runs that
have not finished are not packed. Packing is deterministic (sorted names, no times, no owners),
so the same runs give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

from .runs import DRIFT_FILE, find_runs

# Weights, resumable checkpoints and the owner's lock (sasft/rundir.py): none is a result.
LEFT_BEHIND = {"model", "checkpoints", "owner.json", ".owner.lock"}


def run_files(run_dir: Path):
    """The files of a finished run worth keeping, weights and locks left out."""
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and not path.is_symlink() and rel.parts[0] not in LEFT_BEHIND:
            yield path


def pack(sweep_dir: Path, archive: Path) -> tuple[int, int]:
    """Writes `archive` (.tar.xz) with every finished run under `sweep_dir`; returns (runs
    packed, runs without drift.json)."""
    runs, _ = find_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"error: no finished run (no results.json) under {sweep_dir}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=9) as tar:
        for run in runs:
            for path in run_files(run.dir):
                info = tarfile.TarInfo(str(path.relative_to(sweep_dir)))
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    partial.replace(archive)  # never a half-written archive under the final name
    return len(runs), sum(not (r.dir / DRIFT_FILE).is_file() for r in runs)


def unpack(archive: Path, sweep_dir: Path) -> tuple[int, int]:
    """Extracts the runs of `archive` into `sweep_dir`, leaving every run directory that
    already has a results.json as it is; returns (runs added, runs already there)."""
    added, kept = set(), set()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        runs = {str(Path(m.name).parent) for m in members if Path(m.name).name == "results.json"}
        for run in sorted(runs):
            (kept if (sweep_dir / run / "results.json").is_file() else added).add(run)
        chosen = [m for m in members if str(Path(m.name).parent) in added
                  or any(m.name.startswith(r + "/") for r in added)]
        tar.extractall(sweep_dir, members=chosen, filter="data")
    return len(added), len(kept)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sasft.report.archive",
                                     description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="finished runs of a sweep -> ARCHIVE (.tar.xz)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("archive", type=Path)
    u = verbs.add_parser("unpack", help="ARCHIVE -> runs under a sweep directory")
    u.add_argument("archive", type=Path)
    u.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "pack":
        if not args.sweep_dir.is_dir():
            raise SystemExit(f"error: sweep directory {args.sweep_dir} does not exist")
        packed, undrifted = pack(args.sweep_dir, args.archive)
        note = (f"; {undrifted} without drift.json (run python -m sasft.analyze "
                f"{args.sweep_dir} first to keep their drift)" if undrifted else "")
        print(f"packed {packed} finished runs into {args.archive}{note}")
    else:
        if not args.archive.is_file():
            raise SystemExit(f"error: archive {args.archive} does not exist")
        added, kept = unpack(args.archive, args.sweep_dir)
        print(f"unpacked {added} runs into {args.sweep_dir}; {kept} were there already")


if __name__ == "__main__":
    main(sys.argv[1:])
