"""Runs a stage that enters native code (TensorFlow, LiteRT) in a child process.

Python-side checks (``flatbuffer.check_model``) catch what we can, but TFLite's
calibrator and kernels trust much of a model; a malformed one can still crash
them (SIGSEGV, SIGABRT). In a child process such a crash becomes an
``EqTfliteError`` in the parent: one line, exit code 2, nothing written.

On Linux the child is forked (cheap: modules already imported stay imported);
elsewhere it is spawned. Forking a process whose TensorFlow has already run
ops is safe for the calibrator and the MLIR quantizer (tested in the suite)
but not for TensorFlow's SavedModel loader, see ``io.sources``.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import traceback
from typing import Any, Callable

from eq_tflite.errors import EqTfliteError, first_line


class InternalError(EqTfliteError):
    """An unexpected exception in the child (a bug, not the user's fault); see ``detail``."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def run_isolated(fn: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
    """Returns ``fn(*args, **kwargs)`` computed in a child process.

    EqTfliteError raised by ``fn`` is re-raised here unchanged (same class and
    attributes). A native crash or any other exception becomes EqTfliteError
    naming ``what`` (e.g. "TFLite calibration").
    """
    # fork only on Linux (macOS frameworks are not fork-safe); spawn pickles fn and args
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    child = ctx.Process(target=_child_main, args=(sender, fn, args, kwargs), daemon=True)
    child.start()
    sender.close()
    try:
        try:
            message = receiver.recv()
        except EOFError:  # the child died before sending anything
            message = None
        child.join()
    finally:
        if child.is_alive():  # KeyboardInterrupt or similar in the parent
            child.kill()
            child.join()
        receiver.close()
    if message is None:
        raise EqTfliteError(f"{what} crashed in native code ({_describe_exit(child.exitcode)}); "
                            "the model or data is probably malformed")
    status, payload = message
    if status == "ok":
        return payload
    if status == "error":
        cls, state, text = payload
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        err.__dict__.update(state)
        raise err
    kind, text, detail = payload
    raise InternalError(f"{what} failed unexpectedly ({kind}: {text})", detail)


def _child_main(sender: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    import faulthandler
    faulthandler.disable()  # the parent reports a crash in one line; no dump here
    try:
        message = ("ok", fn(*args, **kwargs))
    except EqTfliteError as err:
        message = ("error", (type(err), dict(err.__dict__), str(err)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        message = ("internal", (type(err).__name__, first_line(err), traceback.format_exc()))
    try:
        sender.send(message)
    except Exception as err:  # e.g. a result that cannot be pickled
        sender.send(("internal", (type(err).__name__, first_line(err), traceback.format_exc())))
    sender.close()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        return f"{name}, perhaps out of memory" if name == "SIGKILL" else name
    return f"exit code {code}"
