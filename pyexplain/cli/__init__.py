"""The ``pyexplain`` command line (Typer). Each command lives in its own module in this package;
the modules import torch and the rest of the library inside the command functions, so ``--help``,
``methods`` and ``models`` start without torch.

:func:`main` turns every :class:`PyExplainError` and usage error into one line on stderr and a
non-zero exit (2); an unexpected exception prints one line too (exit 1), with the traceback only
when ``PYEXPLAIN_DEBUG=1``.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from ..errors import PyExplainError

app = typer.Typer(
    name="pyexplain",
    help="Explain image classifiers with attribution maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: Command modules in the order ``pyexplain --help`` lists their commands; others found here follow.
COMMAND_MODULES = ("explain_cmd", "dataset_cmd", "compare_cmd", "evaluate_cmd", "fit_rules_cmd", "export_cmd",
                   "info_cmd", "info_backend_cmd", "data_cmd")


def _register_commands() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_cmd"))
    for name in [m for m in COMMAND_MODULES if m in found] + [m for m in found if m not in COMMAND_MODULES]:
        importlib.import_module(f"{__name__}.{name}")


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    _register_commands()
    try:
        app(args=argv, standalone_mode=False, prog_name="pyexplain")
    except PyExplainError as exc:
        fail(" ".join(str(exc).split()))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as exc:  # the last line of defence: one line, never a traceback dump
        # Typer vendors its own click, so its exceptions are recognised by shape, not by class.
        name = type(exc).__name__
        if name == "Exit":
            raise SystemExit(getattr(exc, "exit_code", 0)) from None
        if name == "NoArgsIsHelpError":  # bare `pyexplain`: show the help
            print(exc.format_message())
            raise SystemExit(0) from None
        if name == "Abort":
            fail("aborted", 130)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            fail(" ".join(exc.format_message().split()), exc.exit_code)
        if os.environ.get("PYEXPLAIN_DEBUG") == "1":
            raise
        fail(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (PYEXPLAIN_DEBUG=1 shows the traceback)", 1)
