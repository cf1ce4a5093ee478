"""Work done once and shared by every run that needs it (base scores, self-dialogues, prepared
test splits): the first process to need an entry makes it under a file lock while the others
wait, publishes it atomically, and everyone reuses it by its key. A process killed while making
an entry leaves nothing that counts as made, and its lock dies with it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

T = TypeVar("T")


def key(made_from) -> str:
    """A short hash of what an entry was made from (anything JSON-able)."""
    blob = json.dumps(made_from, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def locked(path: str | Path) -> FileLock:
    """The lock under which one process makes `path` while the others wait."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock")


def publish(path: str | Path, text: str) -> None:
    """Write `text` so that a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def publish_json(path: str | Path, data) -> None:
    publish(path, json.dumps(data, indent=2, default=str))


def once(path: Path, make: Callable[[], T], write: Callable[[Path, T], None],
         read: Callable[[Path], T]) -> tuple[T, bool]:
    """The entry at `path`: read if it exists, else made, written (`write` must publish it
    atomically) and returned; and whether it was made now."""
    with locked(path):
        if path.is_file():
            return read(path), False
        value = make()
        write(path, value)
        return value, True
