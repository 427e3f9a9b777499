"""The one error path of every command-line program (eq-tflite, eq_tflite.verify, tools/).

A user-caused failure prints one line ``error: ...`` to stderr and exits with
code 2: bad flags, EqTfliteError, a native crash caught by
``isolation.run_isolated``. An unexpected exception is a bug; it is reported
the same way (one line, marked "internal error") and its traceback is printed
only with ``EQ_TFLITE_DEBUG=1`` or ``--verbose``.

SIGTERM and SIGHUP (``kill PID``, systemd, ``docker stop``, a closed terminal)
end a program like Ctrl-C: one error line, exit code 2, and the cleanup of a
normal failure (the conversion child killed, temp files removed). ``-h`` and
``--help`` print the usage and the program's flags to stdout and exit 0; a
reader that closes stdout early (``eq-tflite --help | head``) is not an error.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable

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
    except (KeyboardInterrupt, Terminated) as err:
        return interrupted(err)
    except MemoryError:
        return fail("out of memory")
    except Exception as err:  # noqa: BLE001 - a bug; still one line for the user
        if _debug():
            traceback.print_exc()
        return fail(f"internal error ({type(err).__name__}: {first_line(err)}); "
                    "please report it (EQ_TFLITE_DEBUG=1 shows the traceback)")


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (a BaseException, like KeyboardInterrupt: no ``except
    Exception`` swallows it, every ``finally`` and cleanup handler runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


def _raise_terminated(signum: int, frame: Any) -> None:
    # One-shot: a repeated SIGTERM must not cut the cleanup the first one started
    # (a stuck cleanup still ends with SIGKILL; the child dies with us then).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def interrupted(err: BaseException) -> int:
    """The error line and exit code of a Ctrl-C or :class:`Terminated`."""
    return fail(f"interrupted ({err.name})" if isinstance(err, Terminated) else "interrupted")


def eq_tflite_main() -> None:
    """Console-script entry point (``eq-tflite``): signal handlers first, then the CLI's
    imports (so a signal during them ends in one error line), then the CLI."""
    handle_termination()
    try:
        from eq_tflite import convert
    except (KeyboardInterrupt, Terminated) as err:
        sys.exit(interrupted(err))
    convert.run()


def handle_termination() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (see module doc)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


class _PipeSafe:
    """sys.stdout whose reader may go away: after EPIPE, further output goes to /dev/null."""

    def __init__(self, stream: Any):
        self._stream = stream

    def _closed_reader(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the buffered rest flushes into /dev/null
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed_reader()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed_reader()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def run_absl(main: Callable[[list[str]], int], usage: str | None = None) -> None:
    """``absl.app.run(main)``, with bad flags reported as one error line (exit code 2).

    ``usage`` (e.g. ``"usage: eq-tflite SRC [flags]"``) heads the help text.
    """
    from absl import app, flags

    handle_termination()
    if not isinstance(sys.stdout, _PipeSafe) and hasattr(sys.stdout, "fileno"):
        sys.stdout = _PipeSafe(sys.stdout)
    args = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    asked = [a for a in args if a in HELP_FLAGS]
    if asked:
        sys.exit(print_help(usage, full=asked[0] == "--helpfull"))

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            sys.exit(fail(first_line(err)))

    try:
        app.run(lambda argv: _exit(_guarded_main(main, argv)), flags_parser=parse)
    except (KeyboardInterrupt, Terminated) as err:  # in absl's own setup, before main
        _exit(interrupted(err))


def _guarded_main(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``guarded(main)``, with signals ignored once it returns (see :func:`_exit`).

    The switch happens inside the ``try``: a signal that lands after the body
    ended but before the handlers are ignored still ends in one error line, not
    in an uncaught KeyboardInterrupt (which Python turns into death by SIGINT).
    """
    try:
        code = guarded(lambda: main(argv))
        _ignore_signals()
        return code
    except (KeyboardInterrupt, Terminated) as err:  # after the body ended, before the switch
        _ignore_signals()
        return interrupted(err)


def _ignore_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _exit(code: int) -> None:
    """Exits with ``code``; a signal from here on is ignored.

    Python's finalization puts every signal that has a Python handler back to
    its default action, and finalizing TensorFlow takes a while: a SIGTERM in
    that window killed a finished conversion (exit -15 after it had written
    its model). Ignored signals stay ignored through finalization.
    """
    _ignore_signals()
    sys.exit(code)


def print_help(usage: str | None, full: bool = False) -> int:
    """Prints the usage line and the flags (all with ``full``) to stdout; returns 0."""
    from absl import flags
    program = os.path.basename(sys.argv[0]) or "program"
    text = usage or f"usage: {program} [flags]"
    body = (flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help()).strip("\n")
    if not full and body.split("\n", 1)[0].endswith(":"):  # "/path/to/module:" heading
        body = body.split("\n", 1)[-1]
    print(text)
    if body:
        print("\nflags:\n" + body)
    if not full:
        print("\n--helpfull lists every flag (TensorFlow's and absl's too).")
    sys.stdout.flush()
    return 0


def _debug() -> bool:
    return os.environ.get("EQ_TFLITE_DEBUG") == "1" or "--verbose" in sys.argv


def _join(text: str) -> str:
    """A multi-line message (e.g. a failed verification summary) on one line."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
