"""What the Hugging Face hub cache holds, and what the hub would give, without downloading:
huggingface_hub's cache lookups for models, datasets' own offline resolution for datasets, and
one metadata request (`auth_check`) when the hub may be used and the thing is not cached.

Offline (HF_HUB_OFFLINE=1, what a compute node without internet needs) only the cache counts.
Online, a thing missing from the cache is fine if the hub serves it to this user: the job then
downloads it, which needs internet on the compute node."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

_OFFLINE_SWITCH = threading.Lock()  # datasets' offline flag is global: one thread flips it at once


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hf_home() -> str:
    from huggingface_hub import constants

    return constants.HF_HOME


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def datasets_cache() -> str:
    import datasets

    return str(datasets.config.HF_DATASETS_CACHE)


def access_problem(repo: str, repo_type: str = "model", revision: str | None = None
                   ) -> str | None:
    """Why the hub does not serve `repo` to this user (gated and not accepted, missing,
    unreachable), or None; one metadata request, nothing downloaded."""
    from huggingface_hub import auth_check
    from huggingface_hub.errors import (GatedRepoError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    try:
        auth_check(repo, repo_type=repo_type)
        if revision:
            from huggingface_hub import HfApi

            info = HfApi().model_info if repo_type == "model" else HfApi().dataset_info
            info(repo, revision=revision)
    except GatedRepoError:
        return (f"{repo} is gated and this user has no access: accept its license at {page}, "
                "then `hf auth login` (or set HF_TOKEN)")
    except RepositoryNotFoundError:
        return f"{repo} does not exist on the hub, or is private to others ({page})"
    except RevisionNotFoundError:
        return f"{repo} has no revision {revision!r}"
    except Exception as e:  # noqa: BLE001  (network errors come in many types)
        return f"the hub is unreachable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    return None


# --- models -------------------------------------------------------------------------------------

_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weights_problem(directory: Path) -> str | None:
    """What is missing of a checkpoint's weights in `directory` (a hub snapshot: its files are
    links into the blob store, so a missing or half-downloaded blob is a missing file)."""
    import json

    for index in _WEIGHT_INDEXES:
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                return (f"{len(missing)} of {len(shards)} weight files missing "
                        f"({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''})")
            return None
    if any((directory / name).is_file() for name in _WEIGHT_FILES):
        return None
    return f"no weights ({' or '.join(_WEIGHT_FILES)}, or an index of shards)"


def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot directory of a hub model (the one holding its config.json), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=hub_cache(),
                                   revision=revision or "main")
    return Path(found).parent if isinstance(found, str) else None


# --- datasets -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _datasets_offline():
    """datasets' own offline resolution (its prepared-dataset cache), whatever the mode: what a
    job on a node without internet would find."""
    import datasets

    with _OFFLINE_SWITCH:
        before = datasets.config.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            datasets.config.HF_HUB_OFFLINE = before


def cached_splits(repo: str, config: str | None, revision: str | None = None, **kwargs
                  ) -> tuple[list[str] | None, str | None]:
    """(the splits the datasets cache holds for this dataset and config, None) or (None, why
    not): `load_dataset_builder` resolved offline, as `load_dataset` resolves it on a node
    without internet; nothing is downloaded or prepared."""
    import datasets

    with _datasets_offline():
        try:
            builder = datasets.load_dataset_builder(repo, config, revision=revision, **kwargs)
        except Exception as e:  # noqa: BLE001  (ConnectionError, ValueError, FileNotFoundError)
            text = " ".join(str(e).split())
            if "Couldn't reach" in text or "is not cached" in text:
                text = "not in the HF datasets cache"
            return None, text
    return sorted(builder.info.splits or {}), None


def base_split(split: str) -> str:
    """"train[:-1000]" -> "train" (datasets' slicing syntax)."""
    return split.split("[", 1)[0].strip()


def dataset_problem(repo: str, config: str | None, splits=(), revision: str | None = None,
                    **kwargs) -> tuple[str | None, str]:
    """(what is wrong or None, where it was found) for a hub dataset a job loads with
    `datasets.load_dataset(repo, config, split=...)`; the dataset's name is the caller's to say."""
    found, why = cached_splits(repo, config, revision, **kwargs)
    if found is not None:
        missing = sorted({base_split(s) for s in splits} - set(found))
        if missing:
            return f"has no split {', '.join(missing)} in the cache (it has {found})", ""
        return None, "in the HF datasets cache"
    if offline():
        return f"{why} ({datasets_cache()}) and HF_HUB_OFFLINE=1", ""
    problem = access_problem(repo, "dataset", revision)
    if problem:
        return f"{why}, and {problem}", ""
    return None, "on the hub, not cached: each job downloads it (compute nodes need internet)"


def load_command(repo: str, config: str | None) -> str:
    """The command that fills the datasets cache with one dataset."""
    args = f"'{repo}'" + (f", '{config}'" if config else "")
    return f"python -c \"import datasets; datasets.load_dataset({args})\""
