"""sasft-preflight: what a run or a sweep will need, checked in seconds on the login node
before anything is queued: the config of every job, the model (weights, tokenizer, chat
template), every task dataset and benchmark, IFEval's NLTK data, the cache directory (and, for
SLURM, the storage the nodes share), W&B, and the SLURM partition, account and GPUs.

    sasft-preflight model=llama task=gsm8k method=sasft        # the same overrides as run.py
    sasft-preflight -m -cd sweeps -cn paper_grid hydra/launcher=slurm

One line per check (ok / warn / FAILED, and the fix), exit status 1 if any failed; nothing is
trained, converted or downloaded. A sweep submitted with a SLURM launcher runs the same checks
first (sasft/preflight/callback.py) and is not submitted if any fails.
"""
