"""The runs of a sweep, as the report and the drift analysis read them: the finished runs and
their results, each method's variants and the reference mix ratio (statistics: stats.py).
Reading results never imports torch or matplotlib."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..record import RESULTS_FILE, SCHEMA_VERSION

# Baselines, then the defences against forgetting, SA-SFT last.
METHOD_ORDER = ("task_only", "freeze", "freeze_half", "ext_mix", "ext_mix_ultrachat", "replay",
                "sdft", "l2_base", "ewc", "sasft")

# Schema 3 added per-item scores ("items"), each benchmark's chance score and KL in the history;
# schema 2 runs are read without them (no item bootstrap, no chance check).
READABLE_SCHEMAS = {2, 3, SCHEMA_VERSION}


# Identity fields that never name a variant: the seed (repeats), and the mix ratio, which the
# comparison fixes at one reference ratio and Figure 2 puts on its x axis.
NOT_VARIANT = ("seed", "method.mix_ratio")


DEFAULT_RATIO = 1.0  # conf/config.yaml's mix_ratio: the ratio a plain `python run.py` uses


DRIFT_FILE = "drift.json"  # written by sasft.analyze into each run directory
MEASURES = {  # CSV column: (label, how to read it from drift.json, None where undefined)
    "weight_change": ("weight change (mean over layers)", lambda d: d["weights"]["mean_layer"]),
    "nll_increase": ("self-dialogue NLL increase",
                     lambda d: d["self_dialogue_nll"]["increase"]),
    "kl": ("KL(base ‖ fine-tuned)", lambda d: d["kl"]["mean"]),  # no "|": it splits md tables
    "leakage": ("style leakage share", lambda d: d["style_leakage"]["share"]),
    # Absent from drift.json written before it was measured.
    "answer_nll": ("answer NLL under the base, increase",
                   lambda d: d.get("answer_nll", {}).get("increase")),
}


# --- reading runs ---------------------------------------------------------------------------


@dataclass
class Run:
    dir: Path
    results: dict
    label: str = ""  # the method, and the fields that tell its variants apart (label_variants)

    model = property(lambda self: self.results["run"]["model"])
    task = property(lambda self: self.results["run"]["task"])
    method = property(lambda self: self.results["run"]["method"])  # the conf/method option
    seed = property(lambda self: self.results["run"]["seed"])
    mixes_data = property(lambda self: self.results["run"]["mixes_data"])
    variant = property(lambda self: self.results["run"]["variant"])  # identity without the seed

    @property
    def ratio(self) -> float | None:
        ratio = self.results["run"]["mix_ratio"]
        return None if ratio is None else float(ratio)

    @property
    def identity_fields(self) -> dict:
        return self.results["identity"]

    def items(self, bench: str, which: str = "final") -> list[float] | None:
        """Per-item scores of `bench` ("base", "final", or "delta": final - base per item), or
        None where the run did not keep them."""
        items = self.results.get("items", {}).get(bench) or {}
        if which == "delta":
            base, final = items.get("base"), items.get("final")
            if base is None or final is None or len(base) != len(final):
                return None
            return [f - b for f, b in zip(final, base)]
        return items.get(which)

    def chance(self, bench: str) -> float | None:
        return self.results["scores"][bench].get("chance")

    @property
    def in_domain(self) -> str | None:
        """The run's in-domain benchmark."""
        return next((b for b, s in self.results["scores"].items() if s["kind"] == "in_domain"),
                    None)


def _not_a_run(path: Path, root: Path) -> bool:
    # Hydra keeps a copy of the config in `.hydra/config.yaml`, and W&B one in
    # `wandb/<run>/files/config.yaml`: neither marks a run directory.
    return any(part.startswith(".") or part == "wandb" for part in path.relative_to(root).parts)


def find_runs(root: Path, skip: Path | None = None) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Completed runs under `root`, and (run dir, reason) for those that are not usable."""
    root = Path(root)
    skip = Path(skip).resolve() if skip else None
    # The report folder may sit inside the sweep; whatever is written there is not a run.
    inside_skip = lambda p: skip is not None and skip in p.resolve().parents  # noqa: E731
    runs, missing = [], []
    for path in sorted(root.rglob(RESULTS_FILE)):
        if _not_a_run(path, root) or inside_skip(path):
            continue
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            missing.append((path.parent, f"unreadable {RESULTS_FILE}: {e}"))
            continue
        if results.get("schema") not in READABLE_SCHEMAS:
            missing.append((path.parent, f"schema {results.get('schema')!r}, expected one of "
                                         f"{sorted(READABLE_SCHEMAS)}"))
            continue
        runs.append(Run(path.parent, results))
    for path in sorted(root.rglob("config.yaml")):
        if not _not_a_run(path, root) and not inside_skip(path) \
                and not (path.parent / RESULTS_FILE).is_file():
            missing.append((path.parent, f"no {RESULTS_FILE} (not finished, or failed)"))
    return runs, missing


def family(label: str) -> str:
    """The method a variant's label names ("sasft [train.learning_rate=0.001]" -> "sasft")."""
    return label.split(" [", 1)[0]


def ordered(labels) -> list[str]:
    """Labels in the project's method order, variants of one method together."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(set(labels), key=lambda l: (rank.get(family(l), len(rank)), family(l), l))


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def label_variants(runs: list[Run]) -> None:
    """Label each run by its method plus the identity fields in which runs of that method
    differ within one (model, task) (the seed and mix ratio aside), so that each label holds
    repeats of one experiment only."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.task, run.method)].append(run)
    varying: dict[str, set[str]] = defaultdict(set)
    for (_, _, method), group in groups.items():
        for key in set().union(*(r.identity_fields for r in group)) - set(NOT_VARIANT):
            if len({_value(r.identity_fields.get(key)) for r in group}) > 1:
                varying[method].add(key)
    for run in runs:
        keys = sorted(varying[run.method])
        run.label = run.method + (" [" + ", ".join(f"{k}={_value(run.identity_fields.get(k))}"
                                                   for k in keys) + "]" if keys else "")


class WhereError(ValueError):
    """A --where filter that names no identity field of any run."""


def select(runs: list[Run], where: list[str]) -> list[Run]:
    """The runs whose identity has every `field=value` of `where` (values compared as YAML)."""
    import yaml

    for condition in where:
        field_name, sep, text = condition.partition("=")
        if not sep:
            raise WhereError(f"--where {condition!r}: expected field=value")
        if runs and not any(field_name in r.identity_fields for r in runs):
            raise WhereError(f"--where {condition!r}: no run has the field {field_name!r} "
                             f"(fields look like train.learning_rate, method.name, model.name)")
        wanted = yaml.safe_load(text)
        if isinstance(wanted, str):  # YAML reads 1e-4 as a string: try it as a number too
            try:
                wanted = float(wanted)
            except ValueError:
                pass
        runs = [r for r in runs if r.identity_fields.get(field_name) == wanted
                or _value(r.identity_fields.get(field_name)) == text]
    return runs


def reference_ratio(runs: list[Run], requested: float | None) -> tuple[float | None, str]:
    """The mix ratio at which mixing methods are compared, and how it was chosen."""
    counts: dict[float, int] = defaultdict(int)
    for run in runs:
        if run.mixes_data:
            counts[run.ratio] += 1
    if requested is not None:
        found = any(math.isclose(r, requested) for r in counts)
        return requested, "given with --ratio" + ("" if found else " (no mixing run has it)")
    if not counts:
        return None, "no mixing runs"
    if any(math.isclose(r, DEFAULT_RATIO) for r in counts):
        return DEFAULT_RATIO, "the default mix_ratio; --ratio changes it"
    ratio = min(counts, key=lambda r: (-counts[r], r))
    return ratio, "the ratio with the most mixing runs (no run at the default 1.0)"


def at_reference(run: Run, ratio: float | None) -> bool:
    return not run.mixes_data or (ratio is not None and math.isclose(run.ratio, ratio))


# --- CSV ----------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
