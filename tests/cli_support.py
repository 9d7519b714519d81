"""Running the CLI in this process, as the tests do."""
from __future__ import annotations

from pyexplain.cli import main


def exit_code(argv: list) -> int:
    """Run ``pyexplain ARGV`` (arguments converted with ``str``); its exit status, 0 when it returns."""
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``pyexplain ARGV``, read from pytest's ``capsys``."""
    code = exit_code(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
