"""Whether a job will find its model: the weights, a tokenizer and its chat template, from
`model.path`, `model.gguf` or `model.hub_id` (the order sasft/model.py loads them in). Only
configs and tokenizers are read; no weights are loaded, converted or downloaded."""

from __future__ import annotations

from pathlib import Path

from . import hub
from .check import Check, failed, ok, warn

NO_TEMPLATE_FIX = "use the -Instruct checkpoint, or add a chat_template to its tokenizer"


def check_model(cfg) -> Check:
    what = f"model {cfg.name}"
    if cfg.path:
        return _local(cfg, what)
    if cfg.get("gguf") is not None:
        return _gguf(cfg, what)
    return _hub(cfg, what)


def _template_problem(tokenizer) -> str | None:
    return None if tokenizer.chat_template else "its tokenizer has no chat template"


def _local(cfg, what: str) -> Check:
    path = Path(cfg.path)
    if cfg.get("toy") is not None and not (path / "config.json").is_file():
        return warn(what, f"toy checkpoint not built yet at {path}: the first job builds it "
                          "(minutes)",
                    f"build it once now: python -m sasft.toy.build model={cfg.name}")
    if not path.is_dir():
        return failed(what, f"model.path does not exist: {path}",
                      "point model.path at a checkpoint directory (config.json, weights, "
                      "tokenizer)")
    if not (path / "config.json").is_file():
        return failed(what, f"model.path has no config.json, so it is not a model: {path}",
                      "point model.path at a checkpoint directory")
    problem = hub.weights_problem(path)
    if problem:
        return failed(what, f"{path}: {problem}", "copy the whole checkpoint there")
    from ..model import load_tokenizer

    try:
        load_tokenizer(cfg)  # the run's own loader: the toy tokenizer, the chat-template check
    except Exception as e:  # noqa: BLE001  (ConfigError, OSError, ValueError from tokenizers)
        return failed(what, f"{path}: {' '.join(str(e).split())}", NO_TEMPLATE_FIX)
    return ok(what, f"local checkpoint {path} (weights, tokenizer, chat template)")


def _gguf(cfg, what: str) -> Check:
    from ..errors import ConfigError
    from ..model import gguf_file

    try:
        path = gguf_file(cfg)
    except ConfigError as e:
        return failed(what, str(e))  # its message says how to install
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.chat_template")
    if field is None:
        return failed(what, f"{path.name} has no chat template", NO_TEMPLATE_FIX)
    return ok(what, f"GGUF file {path.name} from {cfg.gguf.package} (with a chat template); "
                    "converted into the cache on first use")


def _hub(cfg, what: str) -> Check:
    repo, revision = cfg.hub_id, cfg.revision
    what = f"{what} ({repo})"
    download = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    where = ("on a machine with internet, into this same HF_HOME (storage the nodes share), or "
             "set model.path to a local copy")
    snapshot = hub.cached_snapshot(repo, revision)
    if snapshot is None:
        if hub.offline():
            return failed(what, f"not in the HF hub cache ({hub.hub_cache()}) and "
                                "HF_HUB_OFFLINE=1", f"{download} {where}")
        problem = hub.access_problem(repo, "model", revision)
        if problem:
            return failed(what, f"not in the HF hub cache, and {problem}", f"{download} {where}")
        return warn(what, "on the hub, not in the HF hub cache: each job downloads it (compute "
                          "nodes need internet); its chat template is checked then",
                    f"download it once now: {download}")
    problem = hub.weights_problem(snapshot)
    if problem:
        return failed(what, f"cached snapshot {snapshot.name[:12]} is incomplete: {problem}",
                      f"{download} (resumes the download)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            repo, revision=revision, cache_dir=hub.hub_cache(), local_files_only=True,
            trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001
        return failed(what, f"cached, but its tokenizer does not load ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:160]})", f"{download}")
    problem = _template_problem(tokenizer)
    if problem:
        return failed(what, problem, NO_TEMPLATE_FIX)
    return ok(what, f"in the HF hub cache (snapshot {snapshot.name[:12]}: weights, tokenizer, "
                    "chat template)")
