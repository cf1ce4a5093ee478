"""The preflight as a Hydra callback: conf/hydra/launcher/slurm.yaml adds it to
`hydra.callbacks`, so a sweep submitted to SLURM is checked once, whole, before its first job
is submitted, and is not submitted if any check fails. Leave it out of one launch with
`~hydra.callbacks.preflight`."""

from __future__ import annotations

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class Preflight(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from .grid import run

        checks, text = run(GlobalHydra.instance().config_loader(), config)
        print(text, flush=True)
        if any(c.failed for c in checks):
            print("preflight: nothing was submitted (launch without this check: "
                  "~hydra.callbacks.preflight)", file=sys.stderr, flush=True)
            # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings.
            sys.exit(1)
