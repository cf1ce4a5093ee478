"""The turn-length measurement behind conf/generation/smol.yaml's rule (sasft/smol/turns.py),
run on the toy model: every turn recorded, loops told apart from long answers."""

from __future__ import annotations

from omegaconf import open_dict

from sasft.smol import turns
from tests.conftest import compose_config


def test_a_loop_is_a_window_repeated_in_the_tail():
    assert turns.loops(list(range(8)) * 40)  # an 8-token cycle: every 16-token window recurs
    assert not turns.loops(list(range(300)))
    assert not turns.loops([])


def test_every_turn_is_recorded_with_whether_it_ended(tmp_path):
    cfg = compose_config(["model=tiny", f"cache_dir={tmp_path}"])
    with open_dict(cfg):
        cfg.generation.max_new_tokens = 24  # toy turns run 17-51 tokens: some end, some reach it
        cfg.generation.truncated = "cut"
        cfg.generation.batch_size = 8
    records = turns.sample_turns(cfg, dialogues=10, seed=0)
    assert [r["role"] for r in records[:8]] == ["user"] * 8  # the first batch's user turns
    assert {r["role"] for r in records} == {"user", "assistant"}
    assert any(not r["ended"] for r in records) and any(r["ended"] for r in records)
    assert all(r["tokens"] <= 24 + 1 for r in records if r["ended"])
    users = sum(r["role"] == "user" for r in records)
    never = sum(r["role"] == "user" and not r["ended"] for r in records)
    lines = turns.summary(records, limit=600)  # as if 600 were the high limit: 256 and 512 below
    assert f"user turns: {users}; never ended within 600 tokens: {never} " \
        f"({never / users:.1%}), of them looping 0" in lines
    row_256 = next(line for line in lines if line.split()[:1] == ["256"])
    assert row_256.split()[1] == str(never)  # only the turns that never ended reach 256
