"""Run one SA-SFT experiment (or a sweep with -m); the same as the `sasft-train` command.

    python run.py                                       # SA-SFT on the toy world's defaults
    python run.py method=task_only                      # baselines: task_only, freeze, ext_mix
    python run.py model=llama task=gsm8k method=sasft   # a real model, real-model settings
"""

from sasft.cli import entry

if __name__ == "__main__":
    entry()
