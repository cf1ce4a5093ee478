"""Sweeps on SLURM through submitit (conf/hydra/launcher/slurm*.yaml), and the shared cache that
lets a sweep's jobs do the common work once.

The `slurm` tests submit real jobs to the local cluster of scripts/slurm_local.sh (2 one-CPU
job slots) with `python run.py -m hydra/launcher=slurm_local`, and skip, saying why, where no
cluster is up. The cache tests need no cluster: they kill a producer in the middle of writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from transformers import TrainerCallback

from sasft import evaluate, generation
from sasft.data import build_mix
from sasft.model import load_model
from sasft.pipeline import load_task
from sasft.record import RESULTS_FILE
from sasft.report.runs import find_runs
from sasft.train import last_checkpoint, train

from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]

# The shrunk toy run of tests/conftest.py, as command-line overrides.
SMALL = ["task.max_train_examples=24", "train.epochs=1", "train.batch_size=8",
         "train.logging_steps=1", "train.save_model=false", "eval.limit=8",
         "generation.batch_size=32", "mix_ratio=0.5"]


# --- the cluster -------------------------------------------------------------------------------


def _cluster_problem() -> str | None:
    """None if the local cluster can run submitit jobs, else why it cannot."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client (sinfo/sbatch); start the local cluster: bash scripts/slurm_local.sh"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%t"], capture_output=True,
                               text=True, timeout=30)
        # submitit reads job states through accounting: without slurmdbd it waits forever.
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return "SLURM does not answer (slurmctld down?); bash scripts/slurm_local.sh"
    if nodes.returncode != 0:
        return f"SLURM is not up ({nodes.stderr.strip()}); bash scripts/slurm_local.sh"
    states = nodes.stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mix", "alloc")) for s in states):
        return f"no usable node in partition debug (states: {states or 'none'})"
    if acct.returncode != 0:
        return f"SLURM accounting (sacct) does not answer: {acct.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


class Sweep:
    """One `python run.py -m hydra/launcher=slurm_local ...` in the background: it submits the
    sweep's array job and waits for every job; its own output goes to <sweep>.launch.log."""

    def __init__(self, sweep_dir: Path, cache_dir: Path, *overrides: str):
        self.dir = sweep_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = sweep_dir.with_name(sweep_dir.name + ".launch.log")
        cmd = [sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=slurm_local",
               f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}", *SMALL, *overrides]
        # The jobs inherit this environment (sbatch --export=ALL): W&B offline, in each run dir.
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        env.pop("WANDB_DIR", None)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(cmd, cwd=sweep_dir.parent, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> None:
        """Until every job has finished; fails the test (and cancels the jobs) otherwise."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"sweep not done in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")
        if self.proc.returncode != 0:
            self.cancel()  # a failed job ends the launcher; the sweep's other jobs go on
            pytest.fail(f"sweep failed (rc {self.proc.returncode}):\n"
                        f"{self.log.read_text()[-3000:]}\n{job_logs(self.dir)[-3000:]}")

    def stop(self) -> None:
        """Kill the launcher if it still runs, and its jobs, which would go on without it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.cancel()

    def cancel(self) -> None:
        # submitit's folders are named after the job or array ids, started or still queued.
        ids = [p.name for p in (self.dir / ".submitit").glob("[0-9]*") if p.is_dir()]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs that started (`<array>_<task>`, or `<id>` for a
    one-job sweep), from submitit's logs (`<id>_<rank>_log.out`)."""
    return sorted(p.name.removesuffix("_0_log.out")
                  for p in (sweep_dir / ".submitit").glob("*/*_0_log.out"))


def job_logs(sweep_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def run_dirs(sweep_dir: Path) -> dict[str, Path]:
    """{method: run dir} of the sweep's runs: the dirs Hydra gave a job (they hold `.hydra/`)."""
    configs = [p for p in sweep_dir.rglob(".hydra/config.yaml") if ".submitit" not in p.parts]
    loaded = [(OmegaConf.load(c), c) for c in configs]
    # Polled while jobs start: Hydra writes config.yaml in place, so one may still be empty.
    return {cfg.method.name: c.parent.parent for cfg, c in loaded if "method" in cfg}


# --- a downsized sweep, relaunched ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_a_sweep_runs_on_slurm_and_a_relaunch_redoes_only_what_is_missing(cluster, tmp_path):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    start = time.monotonic()
    Sweep(sweep_dir, cache, "method=task_only,sasft").wait(timeout=300)
    first_s = time.monotonic() - start

    runs = run_dirs(sweep_dir)
    assert set(runs) == {"task_only", "sasft"}
    # The launcher's preflight checked the grid once before submitting (sasft/preflight/).
    launch_log = sweep_dir.with_name(sweep_dir.name + ".launch.log").read_text()
    assert launch_log.count("checks for 2 jobs") == 1 and "all passed" in launch_log
    results = {m: json.loads((d / RESULTS_FILE).read_text()) for m, d in runs.items()}
    for method, r in results.items():
        assert r["run"]["method"] == method and r["scores"] and r["summary"]
        assert (runs[method] / ".hydra" / "overrides.yaml").is_file()
        # One W&B run per job, offline, in its run dir.
        assert len(list(runs[method].glob("wandb/offline-run-*/run-*.wandb"))) == 1
    assert results["sasft"]["mix"]["auxiliary"] == 12
    # The base model was scored once for the sweep: one job computed, the other waited and read.
    computed = [m for m, r in results.items() if r["mix"]["base_scores_computed"]]
    assert len(computed) == 1, computed
    found, missing = find_runs(sweep_dir)  # the sweep summary that sasft.report builds on
    assert sorted(r.method for r in found) == ["sasft", "task_only"] and missing == []
    assert len(job_ids(sweep_dir)) == 2

    # Relaunch after task_only was cut off before recording: only it runs again.
    kept = runs["sasft"] / RESULTS_FILE
    kept_mtime = kept.stat().st_mtime_ns
    (runs["task_only"] / RESULTS_FILE).unlink()
    start = time.monotonic()
    Sweep(sweep_dir, cache, "method=task_only,sasft").wait(timeout=240)
    relaunch_s = time.monotonic() - start
    assert kept.stat().st_mtime_ns == kept_mtime
    redone = json.loads((runs["task_only"] / RESULTS_FILE).read_text())
    assert redone["mix"]["base_scores_computed"] == []  # the shared cache again
    assert redone["scores"] == results["task_only"]["scores"]
    logs = job_logs(sweep_dir)
    assert "already complete, not rerun" in logs
    assert "tracking is off" not in logs and "could not start" not in logs  # W&B worked
    assert len(job_ids(sweep_dir)) == 4
    print(f"\nsweep: {first_s:.0f} s; relaunch: {relaunch_s:.0f} s")


# --- preemption: a requeued job resumes from its checkpoint -----------------------------------------

# 3 epochs of 50 steps, about 15 s of training on one free core: the job is stopped after its
# first checkpoint in the second epoch, mid-training, where resuming is hardest (the epoch's
# batch order must come out as in an uninterrupted run).
LONG = ["method=task_only", "task.max_train_examples=200", "train.epochs=3", "train.batch_size=4",
        "train.save_steps=10", "train.logging_steps=5", "train.eval_every_steps=40"]
CUT_AFTER = 60
# Final scores and per-step losses of the resumed run against the uninterrupted one: the
# Trainer restores weights, optimizer, schedule, RNG and data position, so they agree exactly
# on the CPU; the bound leaves room for nothing but float noise.
RESUME_TOL = 1e-6


def _complete_checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(480)
def test_a_preempted_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        cluster, tmp_path):
    cache = tmp_path / "cache"
    start = time.monotonic()
    reference = Sweep(tmp_path / "reference", cache, *LONG)
    cut = Sweep(tmp_path / "preempted", cache, *LONG)
    try:
        deadline = time.monotonic() + 240
        steps: list[int] = []
        while not steps or steps[-1] < CUT_AFTER:
            assert cut.proc.poll() is None, "the sweep ended before the checkpoint"
            assert time.monotonic() < deadline, f"no checkpoint {CUT_AFTER} within 240 s"
            time.sleep(0.2)
            dirs = run_dirs(cut.dir)
            steps = _complete_checkpoints(dirs["task_only"]) if dirs else []
        run_dir = dirs["task_only"]
        [job] = job_ids(cut.dir)
        # What SLURM sends before a time limit (and a preempting cluster on preemption):
        # submitit calls the launcher's checkpoint(), which resubmits the same sweep point,
        # and requeues the job.
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        at_signal = steps[-1]
        assert not (run_dir / RESULTS_FILE).exists(), "signal came too late: training was over"
        cut.wait(timeout=300)
        reference.wait(timeout=120)
    finally:
        cut.stop()
        reference.stop()
    total_s = time.monotonic() - start

    logs = job_logs(cut.dir)
    assert "Caught signal SIGUSR2" in logs, logs[-3000:]
    resumed = re.findall(r"resuming training from (\S+)/checkpoint-(\d+)", logs)
    assert resumed, f"no resume in the job log:\n{logs[-3000:]}"
    resumed_from, resumed_step = Path(resumed[-1][0]), int(resumed[-1][1])
    # The resubmitted job ran in the same Hydra output dir and found the checkpoint it left.
    assert resumed_from == (run_dir / "checkpoints").resolve() and resumed_step >= at_signal
    assert list(run_dirs(cut.dir)) == ["task_only"]
    # SLURM's accounting: the same job, requeued (no new job was submitted). The launcher
    # returns once the result is written, a moment before SLURM records the job's end.
    for _ in range(60):
        sacct = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job, "-o", "State"],
                               capture_output=True, text=True, timeout=30).stdout.split()
        if sacct and sacct[-1] not in ("RUNNING", "COMPLETING", "PENDING"):
            break
        time.sleep(0.5)
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED", sacct

    got = json.loads((run_dir / RESULTS_FILE).read_text())
    want = json.loads((run_dirs(reference.dir)["task_only"] / RESULTS_FILE).read_text())
    for name, s in want["scores"].items():
        assert got["scores"][name]["final"] == pytest.approx(s["final"], abs=RESUME_TOL), name
    for key in ("loss", "eval_in_domain"):  # every logged loss, and the in-domain curve
        curve = lambda r: {h["step"]: h[key] for h in r["history"] if key in h}  # noqa: E731
        assert curve(got).keys() == curve(want).keys() and len(curve(want)) > 1, key
        for step, value in curve(want).items():
            assert curve(got)[step] == pytest.approx(value, abs=RESUME_TOL), (key, step)
    loss = lambda r: {h["step"]: h["loss"] for h in r["history"] if "loss" in h}  # noqa: E731
    diffs = [abs(loss(got)[step] - value) for step, value in loss(want).items()]
    # Both attempts logged to one W&B run (offline: one directory per attempt, one run id).
    attempts = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(attempts) == 2 and len({p.name.rsplit("-", 1)[1] for p in attempts}) == 1
    assert "tracking is off" not in logs and "could not start" not in logs
    print(f"\npreempted after checkpoint {at_signal}, resumed from {resumed_step}; "
          f"max |loss diff| {max(diffs):.1e}; {total_s:.0f} s")


# --- resuming, without a cluster: what a requeued job does, in-process ------------------------


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    """Stops training at a step like a SIGKILL would: no end-of-training save."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed(f"killed at step {self.step}")


@pytest.mark.slow
def test_a_run_resumed_in_a_later_epoch_trains_like_an_uninterrupted_one(tmp_path):
    cfg = compose_config(["method=task_only"])
    with open_dict(cfg):
        cfg.task.max_train_examples = 48
        cfg.train.update(epochs=3, batch_size=8, logging_steps=1, save_steps=2,
                         eval_every_steps=0)  # 6 steps an epoch
    mix = build_mix(load_task(cfg.task).train, [], seed=0)

    def run(run_dir, callbacks=()):
        model, tokenizer = load_model(cfg.model)
        return train(model, tokenizer, mix, cfg.train, run_dir, 0, callbacks=list(callbacks))

    want = run(tmp_path / "uninterrupted")
    with pytest.raises(_Killed):
        run(tmp_path / "cut", [_KillAt(9)])  # in the second epoch; last checkpoint: 8
    # A kill while writing checkpoint 10 would leave it without trainer_state.json: skipped.
    partial = tmp_path / "cut" / "checkpoints" / "checkpoint-10"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    assert last_checkpoint(tmp_path / "cut").endswith("checkpoint-8")
    got = run(tmp_path / "cut")

    loss = lambda h: {e["step"]: e["loss"] for e in h if "loss" in e}  # noqa: E731
    assert loss(got).keys() == loss(want).keys() == set(range(1, 19))
    for step, value in loss(want).items():
        assert loss(got)[step] == pytest.approx(value, abs=RESUME_TOL), step


# --- the shared cache: a crashed producer leaves nothing half-written ---------------------------

_PRODUCER = textwrap.dedent("""
    import json, sys, time
    from omegaconf import OmegaConf
    from sasft import cache as shared_cache, generation

    cfg = OmegaConf.create(json.loads(sys.argv[1]))
    mode, cache = sys.argv[2], sys.argv[3]
    made = []

    def fake_generate(model, tokenizer, count, cfg, seed, progress=None):
        made.append(count)
        if mode == "slow":
            time.sleep(3)  # long enough for another process to queue on the lock
        return ([[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
                 for i in range(count)], {"kept": count})

    if mode == "crash":  # a slow disk: killed before the written file is published
        publish_now = shared_cache.os.replace
        shared_cache.os.replace = lambda src, dst: (time.sleep(60), publish_now(src, dst))

    generation.generate_self_dialogues = fake_generate
    dialogues, stats = generation.cached_self_dialogues(None, None, 200, cfg, 0, "fp", cache)
    print(json.dumps({"generated": made, "cached": stats["cached"], "n": len(dialogues)}))
""")


def _producer(gen_cfg, mode: str, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _PRODUCER, json.dumps(gen_cfg), mode, str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entry(cache: Path, gen_cfg) -> Path:
    return generation.cache_path("fp", 200, OmegaConf.create(gen_cfg), 0, cache)


@pytest.mark.timeout(120)
def test_one_process_generates_while_the_other_waits_then_reads(tmp_path):
    gen_cfg = OmegaConf.to_container(compose_config().generation, resolve=True)
    first = _producer(gen_cfg, "slow", tmp_path)
    time.sleep(1.5)  # let the first take the lock
    second = _producer(gen_cfg, "slow", tmp_path)
    outs = [json.loads(p.communicate(timeout=90)[0].splitlines()[-1]) for p in (first, second)]
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert sum(len(o["generated"]) for o in outs) == 1  # generated once, read once
    assert all(o["n"] == 200 for o in outs)


@pytest.mark.timeout(120)
def test_a_producer_killed_mid_write_leaves_no_entry_and_the_next_one_makes_it(tmp_path):
    gen_cfg = OmegaConf.to_container(compose_config().generation, resolve=True)
    entry = _entry(tmp_path, gen_cfg)
    victim = _producer(gen_cfg, "crash", tmp_path)
    deadline = time.monotonic() + 60
    partial = entry.parent / f".{entry.name}.{victim.pid}.tmp"  # sasft.cache.publish
    while not (partial.is_file() and partial.stat().st_size > 0):
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-write, holding the lock
    victim.wait(timeout=30)
    assert not entry.exists() and not entry.with_suffix(".meta.json").exists()

    # The lock died with its holder; the next process generates the whole entry.
    after = _producer(gen_cfg, "fast", tmp_path)
    out = json.loads(after.communicate(timeout=90)[0].splitlines()[-1])
    assert out == {"generated": [200], "cached": False, "n": 200}
    assert len(entry.read_text().splitlines()) == 200


def test_failed_base_scoring_leaves_no_scores_and_is_redone(tmp_path, monkeypatch):
    benchmarks = {}
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
        benchmarks[name] = {"file": str(tmp_path / f"{name}.jsonl")}
    eval_cfg = compose_config().eval

    def broken(model, tokenizer, todo, cfg):
        raise RuntimeError("killed during lm-eval")

    monkeypatch.setattr(evaluate, "evaluate_items", broken)
    with pytest.raises(RuntimeError):
        evaluate.cached_base_scores(None, None, benchmarks, eval_cfg, "fp", tmp_path)
    assert list((tmp_path / "base_scores").glob("*.json")) == []

    result = {"score": 0.5, "chance": None, "items": None}
    monkeypatch.setattr(evaluate, "evaluate_items", lambda m, t, todo, cfg: {n: result for n in todo})
    scores, computed = evaluate.cached_base_scores(None, None, benchmarks, eval_cfg, "fp", tmp_path)
    assert {n: s["score"] for n, s in scores.items()} == {"a": 0.5, "b": 0.5}
    assert computed == ["a", "b"]
    assert evaluate.cached_base_scores(None, None, benchmarks, eval_cfg, "fp", tmp_path)[1] == []
