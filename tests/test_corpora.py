"""External chat corpora that Python packages ship (sasft/corpora.py): the Chit-Chat corpus
turned into the chat schema, and mixed in by method=ext_mix_chitchat offline."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
from hydra.utils import instantiate

from sasft.corpora import chitchat_dialogue, load_corpus
from sasft.errors import ConfigError
from sasft.pipeline import data_mix, method_context
from sasft.task import load_task

HAS_CHITCHAT = find_spec("chitchat_dataset") is not None


def _said(sender, *texts):
    return [{"text": t, "sender": sender, "timestamp": "2018-05-02T19:38:15Z"} for t in texts]


def test_a_chitchat_conversation_becomes_alternating_turns_ending_with_the_assistant():
    conversation = {"messages": [_said("a", "Hello", "How are you?"), _said("b", "good"),
                                 _said("b", "you?"), _said("a", " "), _said("a", "Tired."),
                                 _said("b", "oh no"), _said("a", "bye")]}
    assert chitchat_dialogue(conversation) == [
        {"role": "user", "content": "Hello\nHow are you?"},
        {"role": "assistant", "content": "good\nyou?"},        # one speaker's messages: one turn
        {"role": "user", "content": "Tired."},                 # blank lines dropped
        {"role": "assistant", "content": "oh no"}]              # the last user line is cut
    assert chitchat_dialogue({"messages": [_said("a", "anyone?"), _said("a", "hello?")]}) is None


def test_a_corpus_loader_that_does_not_load_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match="method.corpus_loader='sasft.corpora' must be"):
        load_corpus("sasft.corpora")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_corpus("sasft.corpora:no_such_corpus")


@pytest.mark.skipif(not HAS_CHITCHAT, reason="needs chitchat-dataset: pip install -e '.[smol]'")
def test_ext_mix_chitchat_mixes_human_chat_from_the_installed_package(make_cfg):
    cfg = make_cfg("method=ext_mix_chitchat", "mix_ratio=0.5")
    method = instantiate(cfg.method)
    method.check(None)
    task = load_task(cfg.task)
    mix, auxiliary, stats = data_mix(cfg, method, task, method_context(cfg, None, None, "fp", task))
    assert len(auxiliary) == len(task.train) // 2 and len(mix) == len(task.train) + len(auxiliary)
    assert stats == {"corpus": "sasft.corpora:chitchat"}
    for dialogue in auxiliary:
        assert [m["role"] for m in dialogue] == ["user", "assistant"] * (len(dialogue) // 2)
        assert all(m["content"].strip() for m in dialogue)
    again = data_mix(cfg, instantiate(cfg.method), task, method_context(cfg, None, None, "fp", task))
    assert again[1] == auxiliary  # the seed alone decides the draw
    assert len(load_corpus("sasft.corpora:chitchat")) == 4017  # chitchat-dataset 0.9.0's two-speaker chats
