"""The one exception type for bad input: the CLI prints its message on one line and exits non-zero."""


class PyExplainError(Exception):
    """A user-facing error (bad image, unknown model, target out of range, ...).

    Its message is a complete, single-line sentence; no traceback is shown for it by the CLI.
    """
