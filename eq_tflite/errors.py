"""User-facing errors: one clear line each, no traceback needed."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text (or its type name).

    A first line that ends in ":" only announces the reason (TFLite's "Failed
    to initialize op resolver for calibration:"), so the next line is joined.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines[0] = f"{lines[0]} {lines[1]}"
    return (lines[0] if lines else type(err).__name__)[:limit]


class EqTfliteError(Exception):
    """An error caused by the user's input (model, data or flags).

    The CLI prints ``str(err)`` on one line and exits non-zero; nothing is
    written to the output path.
    """


class UnsupportedOpsError(EqTfliteError):
    """The int8 converter cannot quantize some ops of the model."""

    def __init__(self, ops: list[str], detail: str = ""):
        self.ops = sorted(set(ops))
        msg = ("the int8 converter cannot quantize these ops: "
               + ", ".join(self.ops or ["<unknown>"]))
        if detail:
            msg += f" ({detail})"
        msg += "; re-run with --allow_float to keep them in float"
        super().__init__(msg)
