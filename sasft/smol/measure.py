"""The base model's scores on every smol benchmark and task test, printed as a table:

    python -m sasft.smol.measure [eval.limit=20 ...]

How the benchmarks in conf/eval/smol.yaml were chosen: kept where the base model is clearly
above chance. Also scores `sasft_smol_ifeval` (sasft/smol/lm_eval_tasks/), through lm-eval with
its task directory included.
"""

from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf

from ..config import compose_config
from ..evaluate import evaluate
from ..model import load_model
from ..task import load_task
from .build import DATA

IFEVAL_DIR = DATA.parent / "lm_eval_tasks"


def ifeval_score(model, tokenizer, cfg) -> float:
    """sasft_smol_ifeval through lm-eval, the way sasft/evaluate.py runs every benchmark."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
              max_batch_size=cfg.max_batch_size, device=str(model.device))
    out = lm_eval.simple_evaluate(model=lm, tasks=["sasft_smol_ifeval"],
                                  task_manager=TaskManager(include_path=str(IFEVAL_DIR)),
                                  limit=cfg.limit, apply_chat_template=True, log_samples=False,
                                  bootstrap_iters=0, verbosity="ERROR", random_seed=cfg.seed,
                                  numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                                  fewshot_random_seed=cfg.seed)
    return float(out["results"]["sasft_smol_ifeval"]["prompt_level_strict_acc,none"])


def main(overrides: list[str]) -> None:
    cfg = compose_config(["model=smol", *overrides])
    start = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    print(f"load: {time.perf_counter() - start:.1f} s")
    benchmarks = {n: OmegaConf.to_container(s, resolve=True) for n, s in cfg.eval.general.items()}
    for task in ("smol_gsm", "smol_extract", "smol_sql"):
        benchmarks[task] = load_task(compose_config([f"task={task}"]).task).benchmark
    for name, spec in benchmarks.items():
        start = time.perf_counter()
        score = evaluate(model, tokenizer, {name: spec}, cfg.eval)[name]
        print(f"{name}: {score:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    print(f"ifeval_simple: {ifeval_score(model, tokenizer, cfg.eval):.3f} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
