"""sasft: study and prevent catastrophic forgetting in LLM fine-tuning (SA-SFT and baselines)."""

from . import config  # noqa: F401  (registers the ${sasft_pkg:...} resolver)

__version__ = "0.1.0"
