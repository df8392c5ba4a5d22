"""The ``ugcn`` command: a thin layer over the library.

Each sub-command lives in ``ugcn/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
parser(s) and sets ``run=<function(args) -> int>``. Errors in the user's input (``ValueError``,
``FileNotFoundError``, ``FileExistsError``) become one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ugcn import __version__
from ugcn.commands.options import resolve_options

# Order = order in `ugcn --help`.
COMMAND_MODULES = (
    "ugcn.commands.demo",
    "ugcn.commands.phantoms",
    "ugcn.commands.train",
    "ugcn.commands.mcdo",
    "ugcn.commands.refine",
    "ugcn.commands.lesions",
    "ugcn.commands.estimators",
)

EXIT_USAGE = 2
CACHE_ENV = "UGCN_COMPILATION_CACHE"


def compilation_cache_dir() -> Optional[Path]:
    """Where the CLI keeps XLA's compiled programs between runs, or ``None`` when switched off.

    ``UGCN_COMPILATION_CACHE`` = a folder, or ``off``/``0``; default ``$XDG_CACHE_HOME/ugcn/jax`` (or
    ``~/.cache/ugcn/jax``). Compiling the fits and samplers takes most of a small CPU run; a repeat run
    with the same shapes loads them instead.
    """
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ugcn" / "jax"


def _enable_compilation_cache() -> None:
    directory = compilation_cache_dir()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home must not stop the run
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``ugcn <cmd>: error: ...``), exit code 2, and plain-text help (the
    descriptions come from docstrings; their reST markup is removed)."""

    def format_help(self) -> str:
        from ugcn.config import plain_text

        return plain_text(super().format_help())

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ugcn",
        description="Uncertainty-driven graph networks for medical image segmentation "
        "(GCN refinement of organ masks, lesion-wise uncertainty).",
    )
    parser.add_argument("--version", action="version", version=f"ugcn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        resolve_options(args)  # every generated option checked, --config applied, before any work
        _enable_compilation_cache()
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"ugcn {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ugcn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
