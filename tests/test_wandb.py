"""W&B tracking (sasft/wandb.py): the shrunk toy run through `sasft.cli.main`, logged
offline, checked from the run's own `.wandb` file; and the ways W&B must never hurt a run."""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from sasft import cli
from sasft import wandb as tracking
from sasft.record import RESULTS_FILE

# --- reading an offline run's .wandb file ----------------------------------------------------
# wandb >= 0.2x writes it from its Go core and ships no Python reader any more. The format is
# LevelDB's log format behind a 7-byte header: 32 KiB blocks of chunks, each chunk a 7-byte
# header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of one
# protobuf `Record`.
_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32 * 1024


def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = _HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"not a .wandb file: {path}"
    records, pending, pos = [], b"", _HEADER.size
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero fill: end of what was written
            break
        pos += _CHUNK.size
        pending += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(wandb_dir: Path, wait_s: float = 15.0) -> dict:
    """The one offline run under `wandb_dir`: its run record, config, history rows and summary.
    wandb's core process may still be writing the file when `finish` returns: wait for it."""
    files = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run, found {files}"
    deadline = time.monotonic() + wait_s
    records = read_wandb_records(files[0])
    while not any(r.WhichOneof("record_type") == "run" for r in records) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        records = read_wandb_records(files[0])
    out = {"run": None, "config": {}, "history": [], "summary": {}, "dir": files[0].parent}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


# --- the real run, offline --------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    wandb_dir = tmp_path / "wandb_root"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb_dir


@pytest.mark.slow
def test_a_run_logs_config_curves_scores_and_dialogues_offline(make_cfg, tmp_path, offline,
                                                                monkeypatch):
    cfg = make_cfg("method=sasft", "mix_ratio=0.5", "wandb.tags=[ci]")
    with open_dict(cfg):
        cfg.train.eval_every_steps = 2  # in-domain scores during training, as in Figure 3
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cli.run(cfg, run_dir)
    results = json.loads((run_dir / RESULTS_FILE).read_text())

    logged = offline_run(offline)
    run = logged["run"]
    assert run.run_group == f"tiny/{cfg.task.name}" and run.job_type == "sasft"
    assert set(run.tags) == {"model:tiny", f"task:{cfg.task.name}", "method:sasft",
                             "mix_ratio:0.5", "seed:0", f"peft:{cfg.peft.name}", "ci"}
    assert run.run_id == (run_dir / tracking.RUN_ID_FILE).read_text()
    # The resolved config, as results.json records it, plus where the run lives.
    config = logged["config"]
    assert config["method"]["name"] == "sasft" and config["mix_ratio"] == 0.5
    assert config["train"]["eval_every_steps"] == 2 and config["wandb"]["mode"] == "offline"
    assert config["run_dir"] == str(run_dir.resolve())
    # Training curves and the in-domain score during training, against the Trainer's step.
    losses = [h for h in logged["history"] if "train/loss" in h]
    assert len(losses) == sum("loss" in h for h in results["history"]) > 1
    assert [h["train/global_step"] for h in losses] == \
        [h["step"] for h in results["history"] if "loss" in h]
    in_domain = [h["eval/in_domain"] for h in logged["history"] if "eval/in_domain" in h]
    assert in_domain == [h["eval_in_domain"] for h in results["history"][1:]
                         if "eval_in_domain" in h] and in_domain
    # Base, final and delta scores in the summary; the sample dialogues as a table.
    summary = logged["summary"]
    for name, s in results["scores"].items():
        assert summary[f"{name}/base"] == pytest.approx(s["base"])
        assert summary[f"{name}/delta"] == pytest.approx(s["delta"])
    for key in ("in_domain_final", "in_domain_delta", "general_final", "general_delta"):
        assert summary[key] == pytest.approx(results["summary"][key])
    assert summary["mix/auxiliary"] == 12 and "train_loss" in summary  # transformers' callback
    assert summary["auxiliary_sample/_type"] == "table-file"
    table_file = next(logged["dir"].glob("files/media/table/auxiliary_sample*.table.json"))
    table = json.loads(table_file.read_text())
    sample = (run_dir / "auxiliary_sample.jsonl").read_text().splitlines()
    assert table["columns"][:3] == ["index", "source", "turns"]
    assert len(table["data"]) == len(sample) == summary["auxiliary_sample/nrows"]
    assert table["data"][0][3] == json.loads(sample[0])["messages"][0]["content"]


# --- W&B never hurts the run ------------------------------------------------------------------


def test_online_that_wandb_refuses_goes_offline(monkeypatch, tmp_path, tiny_cfg, caplog):
    import wandb

    wandb.teardown()  # forget the credentials an earlier test's process-wide session found
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, so wandb.init tries the server ...
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    init = wandb.init

    def no_network(**kwargs):  # ... which does not answer
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("no route to api.wandb.ai")
        return init(**kwargs)

    monkeypatch.setattr(wandb, "init", no_network)
    with open_dict(tiny_cfg):
        tiny_cfg.wandb.mode = "online"
    caplog.set_level(logging.WARNING, logger="sasft.wandb")
    with tracking.start(tiny_cfg, tmp_path / "run") as tracker:
        assert tracker.active and tracker.run.settings.mode == "offline"
    assert any("online start failed" in r.getMessage() for r in caplog.records)


def test_offline_fallback_is_said_once(monkeypatch, tmp_path, tiny_cfg, caplog):
    import wandb

    wandb.teardown()  # forget the credentials an earlier test's process-wide session found
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # where `wandb login` keeps a key
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(tracking, "_said_offline", False)
    with open_dict(tiny_cfg):
        tiny_cfg.wandb.mode = "online"
    caplog.set_level(logging.WARNING, logger="sasft.wandb")
    for job in ("a", "b"):  # two jobs of one sweep in one process (the local launcher)
        with tracking.start(tiny_cfg, tmp_path / job) as tracker:
            assert tracker.active
            tracker.log({"train/loss": 1.0, "train/global_step": 1})
    said = [r for r in caplog.records if "logged offline" in r.getMessage()]
    assert len(said) == 1 and "API key" in said[0].getMessage()


def test_a_wandb_error_turns_tracking_off_and_training_goes_on(monkeypatch, tmp_path, tiny_cfg,
                                                            caplog):
    import wandb
    from transformers import TrainerControl, TrainerState, TrainingArguments

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with open_dict(tiny_cfg):
        tiny_cfg.wandb.mode = "offline"
    tracker = tracking.start(tiny_cfg, tmp_path / "run")
    calls = []

    def service_died(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("wandb service died")

    monkeypatch.setattr(wandb, "log", service_died)
    [callback] = tracker.callbacks()
    state = TrainerState()
    args = TrainingArguments(output_dir=str(tmp_path / "unused"), report_to=[])
    caplog.set_level(logging.WARNING, logger="sasft.wandb")
    for step in range(1, 4):  # the Trainer logging three times
        state.global_step = step
        callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0 / step})
    assert len(calls) == 1 and not tracker.active  # one failure, then no more W&B calls
    assert sum("tracking is off" in r.getMessage() for r in caplog.records) == 1
    tracker.log_results({"summary": {}, "scores": {}, "mix": {"task": 1, "auxiliary": 0},
                         "timings": {}, "run": {"method": "x"}}, Path("."))
    tracker.finish()  # no error either


def test_a_failing_start_leaves_the_run_untracked(monkeypatch, tmp_path, tiny_cfg):
    import wandb

    def refuse(**kwargs):
        raise RuntimeError("wandb-core would not start")

    monkeypatch.setattr(wandb, "init", refuse)
    with open_dict(tiny_cfg):
        tiny_cfg.wandb.mode = "offline"
    tracker = tracking.start(tiny_cfg, tmp_path / "run")
    assert not tracker.active and tracker.callbacks() == []


def test_a_restarted_run_continues_its_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    first, resuming = tracking._run_id(run_dir)
    assert not resuming
    assert tracking._run_id(run_dir) == (first, True)  # a requeued attempt: same W&B run
    (run_dir / RESULTS_FILE).write_text("{}")
    redo, resuming = tracking._run_id(run_dir)  # finished and redone (rerun=true): a new one
    assert redo != first and not resuming
