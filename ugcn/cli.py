"""The ``ugcn`` command: a thin layer over the library.

Each sub-command lives in ``ugcn/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
parser(s) and sets ``run=<function(args) -> int>``. Errors in the user's input (``ValueError``,
``FileNotFoundError``, ``FileExistsError``) and of the system (any ``OSError``: a full disk, a folder that
became unwritable) become one line on stderr and exit code 2, never a traceback. The output folder
(``--out`` / ``OUTDIR``) is checked before the work starts. SIGTERM is handled like Ctrl-C (exit 143, temporaries
removed), and warnings print as one line each.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import warnings
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


def enable_compilation_cache() -> None:
    """Point jax's persistent compilation cache at :func:`compilation_cache_dir` (nothing when it is off).

    Every program is written, however fast it compiled or small it is (jax's defaults skip programs under
    1 s of compile time), so that a second run with the same shapes compiles nothing: it loads every
    program (``benchmarks/bench_compile.py`` counts what a second run compiles).
    """
    directory = compilation_cache_dir()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home must not stop the run
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that ``finally`` blocks remove temporaries (as on Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`Terminated` while the command runs (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text: object) -> str:
    """``text`` on one line (library messages, e.g. nibabel's, may span several)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _os_error_line(err: OSError) -> str:
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f)
    reason = err.strerror or _one_line(err) or type(err).__name__
    return f"{where}: {reason}" if where else reason


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings print as ``ugcn <cmd>: warning: <message> (<Category>)``, without the source line."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"ugcn {command}: warning: {_one_line(message)} ({category.__name__})", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def output_folder(args: argparse.Namespace) -> Optional[str]:
    """The output folder a command writes (``--out`` or the positional ``OUTDIR``), or ``None``."""
    return getattr(args, "out", None) or getattr(args, "outdir", None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _sigterm_raises(), _one_line_warnings(args.command):
            from ugcn.io import check_output_folder

            resolve_options(args)  # every generated option checked, --config applied, before any work
            out = output_folder(args)
            if out is not None:
                check_output_folder(out)  # before the work, not after it
            enable_compilation_cache()
            return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"ugcn {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the system's side: a full disk, a folder made read-only mid-run, ...
        print(f"ugcn {args.command}: error: {_os_error_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as err:
        print(f"ugcn {args.command}: error: out of memory{': ' + _one_line(err) if str(err) else ''} "
              "(use smaller inputs or a machine with more memory)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ugcn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as term:
        print(f"ugcn {args.command}: terminated (signal {term.signum}); nothing half-written is left",
              file=sys.stderr)
        return 128 + term.signum


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
