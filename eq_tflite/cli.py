"""The one error path of every command-line program (eq-tflite, eq_tflite.verify, tools/).

A user-caused failure prints one line ``error: ...`` to stderr and exits with
code 2: bad flags, EqTfliteError, a native crash caught by
``isolation.run_isolated``. An unexpected exception is a bug; it is reported
the same way (one line, marked "internal error") and its traceback is printed
only with ``EQ_TFLITE_DEBUG=1`` or ``--verbose``.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from eq_tflite.errors import EqTfliteError, first_line

#: Exit code for any user-caused failure.
EXIT_BAD_INPUT = 2


#: Longest message printed (a hostile file can make messages quote huge values).
MAX_MESSAGE = 600


def fail(message: str) -> int:
    """Prints ``error: message`` (one line, at most MAX_MESSAGE characters); returns the exit code."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3] + "..."
    print(f"error: {text}", file=sys.stderr)
    return EXIT_BAD_INPUT


def guarded(body: Callable[[], int]) -> int:
    """Runs ``body``; turns every exception into one error line and exit code 2."""
    try:
        return body()
    except EqTfliteError as err:
        detail = getattr(err, "detail", "")
        if detail and _debug():
            print(detail, file=sys.stderr, end="")
        return fail(_join(str(err)))
    except KeyboardInterrupt:
        return fail("interrupted")
    except MemoryError:
        return fail("out of memory")
    except Exception as err:  # noqa: BLE001 - a bug; still one line for the user
        if _debug():
            traceback.print_exc()
        return fail(f"internal error ({type(err).__name__}: {first_line(err)}); "
                    "please report it (EQ_TFLITE_DEBUG=1 shows the traceback)")


def run_absl(main: Callable[[list[str]], int]) -> None:
    """``absl.app.run(main)``, with bad flags reported as one error line (exit code 2)."""
    from absl import app, flags

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            sys.exit(fail(first_line(err)))

    app.run(lambda argv: sys.exit(guarded(lambda: main(argv))), flags_parser=parse)


def _debug() -> bool:
    return os.environ.get("EQ_TFLITE_DEBUG") == "1" or "--verbose" in sys.argv


def _join(text: str) -> str:
    """A multi-line message (e.g. a failed verification summary) on one line."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
