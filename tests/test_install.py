"""Installed like a library: a non-editable install ships its configs and toy world, and its
`sasft-train` command trains from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["task.max_train_examples=24", "train.epochs=1", "train.batch_size=8",
         "train.save_model=false", "eval.limit=8", "generation.batch_size=32", "mix_ratio=0.5",
         "wandb.enabled=false"]

# Run the installed console script with the installed package alone: the checkout's editable
# install (a finder on sys.meta_path, set up by a .pth file) would otherwise answer first.
BOOTSTRAP = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [{target!r}] + [p for p in sys.path if p not in ("", {repo!r})]
import sasft
assert sasft.__file__.startswith({target!r}), sasft.__file__
sys.argv = ["sasft-train", *{args!r}]
exec(compile(open({script!r}).read(), {script!r}, "exec"))
"""


@pytest.mark.slow
def test_a_non_editable_install_trains_from_another_directory(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    assert (target / "sasft" / "conf" / "config.yaml").is_file()
    assert (target / "sasft" / "conf" / "method" / "sasft.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = BOOTSTRAP.format(target=str(target), repo=str(REPO), script=str(target / "bin" /
                            "sasft-train"), args=[f"cache_dir={tmp_path / 'cache'}", *SMALL])
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [results] = list((elsewhere / "outputs").rglob("results.json"))
    recorded = json.loads(results.read_text())
    assert recorded["run"]["method"] == "sasft" and recorded["mix"]["auxiliary"] == 12
    # The toy model and data came from the installed package, not the checkout.
    assert recorded["config"]["model"]["path"].startswith(str(target))


def test_the_smol_extra_brings_what_eval_smol_imports():
    """eval=smol scores with lm-eval's IFEval checkers (sasft/smol/lm_eval_tasks): every
    third-party module they import comes with `pip install -e ".[smol]"`, from the extra's own
    requirements, the package's, or theirs (a fresh environment then has them: .ci/run)."""
    import ast
    import tomllib
    from importlib import metadata
    from importlib.util import find_spec

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = [Requirement(r) for r in project["optional-dependencies"]["smol"]
              + project["dependencies"]]
    brought = {canonicalize_name(r.name) for r in direct}
    for req in direct:  # one level down: each requirement's own, and those of its extras
        for dep in map(Requirement, metadata.requires(req.name) or []):
            if not dep.marker or any(dep.marker.evaluate({"extra": e}) for e in req.extras):
                brought.add(canonicalize_name(dep.name))

    checkers = Path(find_spec("lm_eval.tasks.ifeval").submodule_search_locations[0])
    modules = set()
    for source in checkers.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    providers = metadata.packages_distributions()
    needed = {canonicalize_name(providers[m][0]) for m in modules - set(sys.stdlib_module_names)}
    assert {"langdetect", "immutabledict", "nltk"} <= needed  # what the checkers are known to use
    assert needed <= brought, f"not brought by the smol extra: {sorted(needed - brought)}"
