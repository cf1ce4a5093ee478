"""The `sasft-preflight` command: run.py's command line (overrides, -m, -cd, -cn, -cp) parsed
by Hydra's own argument parser, composed, checked, reported."""

from __future__ import annotations

import sys

from ..errors import SasftError
from . import __doc__ as USAGE
from .check import failed, one_line

_ACCEPTED = "overrides, -m/--multirun, -cd/--config-dir, -cn/--config-name, -cp/--config-path"


def main(argv: list[str] | None = None) -> None:
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        print(USAGE)
        return
    other = [flag for flag, on in (("--cfg", args.cfg), ("--info", args.info),
                                   ("--shell-completion", args.shell_completion),
                                   ("--hydra-help", args.hydra_help)) if on]
    if other:
        print(f"error: sasft-preflight takes {_ACCEPTED}; not {', '.join(other)}",
              file=sys.stderr)
        sys.exit(2)

    from .grid import run
    from .jobs import compose

    try:
        loader, master = compose(args)
    except Exception as e:  # noqa: BLE001  (Hydra's composition errors: a bad override or file)
        print(failed("config", one_line(e)).line())
        print("preflight: the command line does not compose; nothing else was checked")
        sys.exit(1)
    try:
        checks, text = run(loader, master)
    except SasftError as e:  # a sweep this command cannot expand
        print(failed("config", str(e)).line())
        sys.exit(1)
    print(text)
    sys.exit(1 if any(c.failed for c in checks) else 0)
