"""The ``spectrafm`` console script: ``--help``, ``--version`` and argument errors answered without importing torch or
transformers, then the command run by `spectrafm_hf.cli.main`.

This module lives outside the ``spectrafm_hf`` package on purpose: importing anything inside the package runs its
``__init__``, which registers the model with transformers (torch + transformers: ~10 s on a loaded machine), so the
parser is built from ``spectrafm_hf/cli.py`` loaded on its own (it imports only the standard library and numpy at
module level). ``python -m spectrafm_hf.cli`` still works; it imports the package first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INTERRUPTED = 130  # as spectrafm_hf.cli.INTERRUPTED: Ctrl-C


def parser_module():
    """``spectrafm_hf/cli.py`` as a standalone module (for its `build_parser`), without importing the package."""
    if "spectrafm_hf.cli" in sys.modules:  # already paid for: use it
        return sys.modules["spectrafm_hf.cli"]
    spec = importlib.util.find_spec("spectrafm_hf")  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("spectrafm: the spectrafm_hf package is not installed (pip install spectrafm_hf)")
    path = Path(list(spec.submodule_search_locations)[0]) / "cli.py"
    cli_spec = importlib.util.spec_from_file_location("_spectrafm_cli_parser", path)
    module = importlib.util.module_from_spec(cli_spec)
    cli_spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser_module().build_parser().parse_args(argv)  # --help, --version and usage errors exit (0 / 2) here
        from spectrafm_hf.cli import main as run  # the heavy imports, only to run a command

        return run(argv)
    except KeyboardInterrupt:  # e.g. while torch is still being imported
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
