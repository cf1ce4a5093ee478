"""The real path offline (issue 20): a private Hugging Face cache filled as a login-node
download leaves it (tests/hub_cache.py), then sasft resolves models and datasets by their hub
ids with HF_HUB_OFFLINE=1, exactly as on a compute node. Each check runs in a subprocess, since
huggingface_hub and datasets read the offline switches at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hub_cache

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf_home")
    hub_cache.put_everything(root, tmp_path_factory.mktemp("checkpoints"))
    return root


def offline(hf_home: Path, code: str) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_models_resolve_by_hub_id_with_their_chat_templates(hf_home):
    out = offline(hf_home, """
import json
from sasft.config import compose_config
from sasft.model import load_model
from sasft.analyze import weights_dir
res = {}
for name in ("llama1b", "qwen0.5b"):
    cfg = compose_config([f"model={name}"])
    model, tok = load_model(cfg.model)
    res[name] = {"prompt": tok.apply_chat_template([{"role": "user", "content": "hi"}],
                 tokenize=False, add_generation_prompt=True), "eos": tok.eos_token,
                 "snapshot": str(weights_dir(cfg.model))}
print(json.dumps(res))
""")
    assert "<|start_header_id|>assistant<|end_header_id|>" in out["llama1b"]["prompt"]
    assert out["llama1b"]["eos"] == "<|eot_id|>" and out["qwen0.5b"]["eos"] == "<|im_end|>"
    assert "You are Qwen, created by Alibaba Cloud" in out["qwen0.5b"]["prompt"]
    assert "models--meta-llama--Llama-3.2-1B-Instruct/snapshots/" in out["llama1b"]["snapshot"]


def test_tasks_and_benchmarks_load_offline_by_hub_id(hf_home):
    out = offline(hf_home, f"cache = {str(hf_home / 'sasft')!r}" + """
import json
from sasft.config import compose_config
from sasft.task import load_task
from sasft.evaluate import benchmark_prompts
cfg = compose_config(["model=llama1b", "task=gsm8k", "cache_dir=" + cache])
task = load_task(cfg.task)
general = {n: s for n, s in cfg.eval.general.items() if n in ("arc_challenge", "ifeval")}
prompts = benchmark_prompts(general, "<|eot_id|>", 2)
print(json.dumps({"train": len(task.train), "prompts": prompts}))
""")
    assert out["train"] == len(hub_cache.GSM8K)
    assert [len(p) for p in out["prompts"].values()] == [2, 2]
