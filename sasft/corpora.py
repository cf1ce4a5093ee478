"""Chat corpora shipped inside Python packages, turned into the project's chat schema.

An external-mixing method names one by `method.corpus_loader` ("module:function", a function
returning records {"messages": [...]}) instead of a file or a hub dataset, so it works offline
wherever the package is installed.
"""

from __future__ import annotations

import functools
from importlib import import_module
from importlib.util import find_spec

from .errors import ConfigError

CHITCHAT_INSTALL = "pip install chitchat-dataset   (or pip install -e '.[smol]')"


def load_corpus(loader: str) -> list[dict]:
    """The records of the corpus function `loader` names ("module:function")."""
    module, _, name = loader.partition(":")
    if not module or not name:
        raise ConfigError(f"method.corpus_loader={loader!r} must be 'module:function'")
    try:
        function = getattr(import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"method.corpus_loader={loader!r} cannot be loaded ({e})") from None
    return function()


def chitchat_dialogue(conversation: dict) -> list[dict] | None:
    """One Chit-Chat conversation as alternating user/assistant turns: its first speaker is the
    user, the other the assistant; a speaker's consecutive messages form one turn, one line
    each. Cut after its last assistant turn; None if it has none (one speaker only)."""
    turns: list[tuple[str, list[str]]] = []
    for message in conversation["messages"]:
        for utterance in message:
            text = utterance["text"].strip()
            if not text:
                continue
            if turns and turns[-1][0] == utterance["sender"]:
                turns[-1][1].append(text)
            else:
                turns.append((utterance["sender"], [text]))
    dialogue = [{"role": ("user", "assistant")[i % 2], "content": "\n".join(lines)}
                for i, (_, lines) in enumerate(turns)]
    dialogue = dialogue[: len(dialogue) // 2 * 2]
    return dialogue or None


@functools.lru_cache(maxsize=1)
def _chitchat() -> tuple[dict, ...]:
    if find_spec("chitchat_dataset") is None:
        raise ConfigError(f"the Chit-Chat corpus needs the chitchat-dataset package: "
                          f"{CHITCHAT_INSTALL}")
    from chitchat_dataset import Dataset

    records = []
    for key, conversation in sorted(Dataset().items()):  # sorted: the same order everywhere
        dialogue = chitchat_dialogue(conversation)
        if dialogue is not None:
            records.append({"messages": dialogue, "id": key})
    return tuple(records)


def chitchat() -> list[dict]:
    """BYU's Chit-Chat Challenge conversations (PyPI chitchat-dataset 0.9.0: 7,168 open-domain
    chats between people, typed in a chat app; MIT licence), those with two speakers.
    Human-written chat, not UltraChat's GPT-3.5 dialogues: a stand-in for UltraChat where the
    hub is out of reach."""
    return list(_chitchat())
