"""Whether a job will find its training data: a task's files or hub dataset (with the splits it
reads), and a mixing method's external corpus. Files are found, not read; hub datasets are
resolved as `datasets.load_dataset` resolves them (sasft/preflight/hub.py)."""

from __future__ import annotations

from ..data import DataError, matching_paths
from ..task import is_mapped
from . import hub
from .check import Check, failed, ok

FILE_FIX = "fix the path, or set the field to the file's real location"


def _files(what: str, fields: dict[str, str]) -> Check | None:
    """A failure naming the first field whose file (or glob) matches nothing, else None."""
    for field, pattern in fields.items():
        try:
            matching_paths(str(pattern))
        except DataError as e:
            return failed(what, f"{field}: {e}", FILE_FIX)
    return None


def _hub_dataset(what: str, repo: str, config: str | None, splits, revision, local: str
                 ) -> Check:
    problem, where = hub.dataset_problem(repo, config, splits, revision)
    name = repo + (f" ({config})" if config else "")
    if problem:
        return failed(what, f"dataset {name} {problem}",
                      f"on a machine with internet, into this same HF_HOME (storage the nodes "
                      f"share): {hub.load_command(repo, config)}; or a local copy in {local}")
    return ok(what, f"dataset {name} {where}")


def check_task(cfg) -> Check:
    what = f"task {cfg.name}"
    if not is_mapped(cfg):  # the chat schema: a training file and a test file
        fields = {"task.train_file": cfg.train_file, "task.benchmark.file": cfg.benchmark.file}
        return _files(what, fields) or ok(what, "local files " + ", ".join(
            str(v) for v in fields.values()))
    local = {f"task.{s}_file": cfg[f"{s}_file"] for s in ("train", "test") if cfg[f"{s}_file"]}
    problem = _files(what, local)
    if problem or len(local) == 2:
        return problem or ok(what, "local files " + ", ".join(map(str, local.values())))
    if not cfg.hub_id:
        return failed(what, "neither task.hub_id nor task.train_file/test_file is set",
                      "set task.hub_id, or both local files")
    splits = [cfg[f"{s}_split"] for s in ("train", "test") if not cfg[f"{s}_file"]]
    return _hub_dataset(what, cfg.hub_id, cfg.hub_config, splits, cfg.revision,
                        "task.train_file and task.test_file")


def check_corpus(cfg) -> Check | None:
    """A mixing method's external corpus (ext_mix, replay), or None for methods without one."""
    if "corpus_file" not in cfg and "corpus_hub_id" not in cfg:
        return None
    what = f"method {cfg.name} corpus"
    if cfg.corpus_file:
        return _files(what, {"method.corpus_file": cfg.corpus_file}) or ok(
            what, f"local file {cfg.corpus_file}")
    if not cfg.corpus_hub_id:
        return failed(what, "neither method.corpus_file nor method.corpus_hub_id is set",
                      "set one of them")
    return _hub_dataset(what, cfg.corpus_hub_id, cfg.get("corpus_hub_config"),
                        [cfg.corpus_split], cfg.get("corpus_revision"), "method.corpus_file")
