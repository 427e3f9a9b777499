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

import io
import multiprocessing as mp
import signal
import sys
import traceback
from typing import Any, Callable

from eq_tflite.errors import EqTfliteError, first_line


#: True inside a child made by run_isolated (nested stages then run inline).
_IN_CHILD = False


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
    if _IN_CHILD:  # already isolated: a crash here ends this child, which the parent reports
        return fn(*args, **kwargs)
    # fork only on Linux (macOS frameworks are not fork-safe); spawn pickles fn and args
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    # not a daemon: the stage may isolate a sub-stage in turn (the finally below reaps it)
    child = ctx.Process(target=_child_main, args=(sender, fn, args, kwargs))
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
    status, payload, output = message
    for name, text in output.items():
        getattr(sys, name).write(text)
    if status == "ok":
        return payload
    if status == "error":
        cls, state, text = payload
        err = cls.__new__(cls)
        Exception.__init__(err, text)
        err.__dict__.update(state)
        raise err
    kind, text, detail = payload
    raise InternalError(f"internal error in {what} ({kind}: {text}); please report it "
                        "(EQ_TFLITE_DEBUG=1 shows the traceback)", detail)


def _child_main(sender: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    import faulthandler
    global _IN_CHILD
    _IN_CHILD = True
    faulthandler.disable()  # the parent reports a crash in one line; no dump here
    captured = _capture_unless_real_files()
    try:
        message = ("ok", fn(*args, **kwargs))
    except EqTfliteError as err:
        message = ("error", (type(err), dict(err.__dict__), str(err)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        message = ("internal", (type(err).__name__, first_line(err), traceback.format_exc()))
    output = {name: buf.getvalue() for name, buf in captured.items()}
    try:
        sender.send((*message, output))
    except Exception as err:  # e.g. a result that cannot be pickled
        sender.send(("internal", (type(err).__name__, first_line(err), traceback.format_exc()), output))
    sender.close()


def _capture_unless_real_files() -> dict[str, io.StringIO]:
    """Where sys.stdout/stderr are Python objects (a test's capture), collect the child's text.

    Real files are inherited by the child and written directly (progress bars stay live).
    """
    captured = {}
    for name in ("stdout", "stderr"):
        try:
            getattr(sys, name).fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            captured[name] = io.StringIO()
            setattr(sys, name, captured[name])
    return captured


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        return f"{name}, perhaps out of memory" if name == "SIGKILL" else name
    return f"exit code {code}"
