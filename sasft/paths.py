"""Where the installed package and its configs live, wherever it was installed."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The repository's conf/, shipped inside the package as sasft.conf (pyproject.toml).
CONF_MODULE = "sasft.conf"
