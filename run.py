"""Run one SA-SFT experiment (or a sweep with -m). Examples:

    python run.py                                   # SA-SFT on the toy world's defaults
    python run.py method=task_only                  # baselines: task_only, freeze, ext_mix
    python run.py method=freeze method.trainable_layers=1
    python run.py method=sasft mix_ratio=0.5 seed=2
"""

import hydra
from omegaconf import DictConfig

import sasft.cli


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return sasft.cli.main(cfg)


if __name__ == "__main__":
    main()
