"""Whether a job can score its benchmarks: a local file exists, or lm-eval's registry knows the
task or group, and the datasets of every task it holds are in the cache (or on the hub). Read
from lm-eval's task index (its parsed YAMLs): building the tasks would load their datasets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..data import DataError, matching_paths
from ..evaluate import included_task_dirs, task_manager
from ..schema import benchmark_spec
from . import hub
from .check import Check, failed, ok

# datasets' packaged builders: their data are local files named in dataset_kwargs.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
LIST_TASKS = "lm-eval list tasks"


def _index(include: tuple[str, ...]):
    from lm_eval.tasks._index import Kind

    return task_manager(include).task_index, Kind  # the index the runs use


def leaves(name: str, include: tuple[str, ...] = ()) -> dict[str, dict]:
    """{task name: its YAML config} of every task a registry name holds (a group's, through
    its subgroups and tags), with the folders of tasks a config ships (`include`); KeyError if
    lm-eval does not know the name."""
    index, kind = _index(include)
    entry = index[name]
    if entry.kind is kind.GROUP:
        found = {}
        for child in (entry.cfg or {}).get("task", []):
            child_name = child if isinstance(child, str) else child.get("task")
            if child_name in index:
                found |= leaves(child_name, include)
            elif isinstance(child, dict):  # a task defined inside the group's YAML
                found[str(child_name)] = child
        return found
    if entry.kind is kind.TAG:
        return {t: index[t].cfg or {} for t in sorted(entry.tags) if t in index}
    return {name: entry.cfg or {}}


def _hub_datasets(tasks: dict[str, dict]) -> dict[tuple, list[str]]:
    """{(path, name, revision): [task names]} of the hub datasets the tasks load."""
    found: dict[tuple, list[str]] = {}
    for task, cfg in tasks.items():
        path = cfg.get("dataset_path")
        if not path or "custom_dataset" in cfg or "class" in cfg or path in _LOCAL_BUILDERS:
            continue
        revision = (cfg.get("dataset_kwargs") or {}).get("revision")
        found.setdefault((path, cfg.get("dataset_name"), revision), []).append(task)
    return found


def _summary(keys, shown: int = 3) -> str:
    """"cais/mmlu (57 configs), google/IFEval": the datasets, by repository, the first few."""
    repos: dict[str, int] = {}
    for path, _, _ in keys:
        repos[path] = repos.get(path, 0) + 1
    names = [f"{p} ({n} configs)" if n > 1 else p for p, n in repos.items()]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_benchmark(name: str, spec) -> Check:
    """The benchmark's line: lm-eval knows it, and its datasets are there."""
    include = included_task_dirs({name: spec})
    spec = benchmark_spec(spec)
    what = f"benchmark {name}"
    if spec["file"]:
        try:
            matching_paths(str(spec["file"]))
        except DataError as e:
            return failed(what, str(e), "fix the benchmark's file path")
        return ok(what, f"local file {spec['file']}")
    task = spec["lm_eval_task"]
    if not task:
        return failed(what, "names neither a file nor an lm_eval_task",
                      f"set eval.general.{name}.lm_eval_task or .file")
    try:
        tasks = leaves(task, include)
    except KeyError:
        return failed(what, f"lm-eval {_version()} has no task or group {task!r}",
                      f"name one that `{LIST_TASKS}` lists")
    datasets = _hub_datasets(tasks)
    with ThreadPoolExecutor(8) as pool:  # online: a metadata request per dataset
        results = dict(zip(datasets, pool.map(lambda k: hub.dataset_problem(
            k[0], k[1], revision=k[2]), datasets)))
    missing = [k for k, (problem, _) in results.items() if problem]
    held = f"lm-eval {task!r} ({len(tasks)} task{'s' if len(tasks) > 1 else ''})"
    if missing:
        return failed(
            what, f"{held}: {len(missing)} of {len(datasets)} datasets {results[missing[0]][0]}: "
                  f"{_summary(missing)}",
            "load them once on a machine with internet, into this same HF_HOME: "
            f"python -c \"from lm_eval.tasks import TaskManager; TaskManager().load(['{task}'])\""
        )
    where = {w for _, w in results.values()}
    data = f"datasets {_summary(datasets)} {' / '.join(sorted(where))}" if datasets else \
        "local data"
    return ok(what, f"{held}; {data}")


def _version() -> str:
    from importlib import metadata

    return metadata.version("lm_eval")
