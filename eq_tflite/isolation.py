"""Runs a stage that enters native code (TensorFlow, LiteRT) in a child process.

Python-side checks (``io.validation.check_model``) catch what we can, but TFLite's
calibrator and kernels trust much of a model; a malformed one can still crash
them (SIGSEGV, SIGABRT). In a child process such a crash becomes an
``EqTfliteError`` in the parent: one line, exit code 2, nothing written.

On Linux the child is forked (cheap: modules already imported stay imported);
elsewhere it is spawned. Forking a process whose TensorFlow has already run
ops is safe for the calibrator and the MLIR quantizer (tested in the suite)
but not for TensorFlow's SavedModel loader, see ``io.sources``.

Nested calls in such a child run inline, except inside ``separate_stages``:
there they go to one *stage worker*, a child of the child started at the first
call, which runs them in turn and ends when the block does (or earlier,
``_Worker.close``). The CLI's conversion child uses it for TensorFlow's stages
(SavedModel load, TFLite's int8 conversion), so TensorFlow's memory is never
part of the conversion child's peak.

The child never outlives the parent: on Linux it asks the kernel for SIGKILL
when the parent dies (``PR_SET_PDEATHSIG``), and everywhere a watch thread
ends it once its parent process id changes. It holds no copy of the pipe's
read end, so a send to a dead parent fails instead of blocking forever. Its
temp files (TensorFlow writes some, e.g. a SavedModel export of a Keras model)
go to a private directory that a tiny janitor process removes as soon as the
child is gone, however it ended (crash, SIGKILL, its parent killed).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Iterator

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
    if _WORKER is not None:  # a stage worker of this process (see separate_stages)
        return _WORKER.run(fn, args, kwargs, what)
    if _IN_CHILD:  # already isolated: a crash here ends this child, which the parent reports
        return fn(*args, **kwargs)
    receiver, reap = _start_child(fn, args, kwargs, duplex=False)
    message, answered = None, False
    try:
        try:
            message = receiver.recv()
        except EOFError:  # the child died before sending anything
            pass
        answered = True
    finally:
        receiver.close()
        # waits for a child that answered (or died); kills it at once on KeyboardInterrupt,
        # SIGTERM or similar in the parent
        exitcode = reap(None if answered else 0)
    return _result(message, what, exitcode)


def _start_child(fn: Callable[..., Any], args: tuple, kwargs: dict,
                 duplex: bool) -> tuple[Any, Callable[..., int | None]]:
    """Starts a child running ``fn`` (``_serve``: a stage worker); returns this end of its pipe
    and ``reap(wait=None)``, which waits for it up to ``wait`` seconds (None: until it ends),
    kills it if it is still running, removes its temp files and returns its exit code."""
    # fork only on Linux (macOS frameworks are not fork-safe); spawn pickles fn and args
    forking = sys.platform.startswith("linux")
    ctx = mp.get_context("fork" if forking else "spawn")
    scratch = tempfile.mkdtemp(prefix="eq_tflite_child_")
    here, there = ctx.Pipe(duplex=True) if duplex else ctx.Pipe(duplex=False)
    janitor, alive_fd = _start_janitor(scratch) if forking else (None, None)
    sys.stdout.flush()
    sys.stderr.flush()
    # not a daemon: the stage may isolate a sub-stage in turn (its reaper ends it)
    child = ctx.Process(target=_child_main, args=(there, here, os.getpid(), scratch, fn, args,
                                                  kwargs))
    try:
        child.start()
    finally:
        if alive_fd is not None:
            os.close(alive_fd)  # only the child holds it now: the janitor sees EOF when it is gone
        there.close()

    def reap(wait: float | None = None) -> int | None:
        child.join(timeout=wait)
        if child.is_alive():
            child.kill()
            child.join()
        _end_janitor(janitor)
        shutil.rmtree(scratch, ignore_errors=True)
        return child.exitcode

    return here, reap


def _result(message: tuple | None, what: str, exitcode: int | None) -> Any:
    """The value of a child's message, or its error raised here (None: the child died)."""
    if message is None:
        raise EqTfliteError(f"{what} crashed in native code ({_describe_exit(exitcode)}); "
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


def _child_main(sender: Any, receiver: Any, parent: int, scratch: str, fn: Callable[..., Any],
                args: tuple, kwargs: dict) -> None:
    import faulthandler
    global _IN_CHILD, _WORKER
    _IN_CHILD, _WORKER = True, None  # a forked worker's calls run in it (no worker of its own)
    receiver.close()  # a send to a dead parent must fail (EPIPE), not block on our own read end
    _die_with_parent(parent)
    # The parent reports the signals it is sent; here they end the child at once
    # (a Python handler would wait for native code to return).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    tempfile.tempdir = scratch  # removed by the janitor (forked) or the parent, whatever happens
    os.environ["TMPDIR"] = scratch
    faulthandler.disable()  # the parent reports a crash in one line; no dump here
    try:
        if fn is _serve:  # a stage worker: calls come through the pipe until it is closed
            _serve(sender)
        else:
            _send(sender, _call(fn, args, kwargs))
        sender.close()
    except OSError:  # the parent is gone (EPIPE): nobody to report to
        os._exit(1)


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
    """``fn(*args, **kwargs)`` as a message: (status, payload, captured output)."""
    saved = sys.stdout, sys.stderr
    captured = _capture_unless_real_files()
    try:
        message = ("ok", fn(*args, **kwargs))
    except EqTfliteError as err:
        message = ("error", (type(err), dict(err.__dict__), str(err)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        message = ("internal", (type(err).__name__, first_line(err), traceback.format_exc()))
    finally:
        sys.stdout, sys.stderr = saved
    return (*message, {name: buf.getvalue() for name, buf in captured.items()})


def _send(conn: Any, message: tuple) -> None:
    """Sends a message; one that cannot be pickled becomes an internal error. OSError: parent gone."""
    try:
        conn.send(message)
    except OSError:
        raise
    except Exception as err:  # e.g. a result that cannot be pickled
        conn.send(("internal", (type(err).__name__, first_line(err), traceback.format_exc()),
                   message[2]))


def _serve(conn: Any) -> None:
    """A stage worker's loop: (fn, args, kwargs) in, a message out, until the pipe closes."""
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        _send(conn, _call(*request))


# --------------------------------------------------------------------------
# Stage workers: several stages in one child


#: The stage worker ``run_isolated`` hands calls to (``separate_stages``), or None.
_WORKER: "_Worker | None" = None


class _Worker:
    """One child, started at the first call, that runs each call as ``run_isolated`` would."""

    def __init__(self) -> None:
        self._conn: Any = None
        self._done: Callable[..., int | None] | None = None

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, what: str) -> Any:
        if self._conn is None:
            self._conn, self._done = _start_child(_serve, (), {}, duplex=True)
        message = None
        try:
            self._conn.send((fn, args, kwargs))
            message = self._conn.recv()
        except (EOFError, OSError):  # the worker died (a crash in native code)
            pass
        return _result(message, what, self.close() if message is None else None)

    def close(self) -> int | None:
        """Ends the worker (its memory is returned now); its exit code, None if never started."""
        if self._conn is None:
            return None
        conn, done = self._conn, self._done
        self._conn = self._done = None
        conn.close()  # the worker's loop ends on EOF
        return done(30)


@contextlib.contextmanager
def separate_stages(enabled: bool = True) -> Iterator["_Worker | None"]:
    """Within: ``run_isolated`` calls run in one worker child of this process, in turn.

    For a run_isolated child that has not loaded TensorFlow: its TensorFlow
    stages (loading a SavedModel, TFLite's int8 conversion) then import
    TensorFlow once, in the worker, and its memory (about 1 GB on a 240x240
    EfficientNet) is returned when the worker ends (``_Worker.close``, or
    leaving the block), not held through the method stage. ``enabled`` False:
    no worker (yields None).
    """
    global _WORKER
    if not enabled or _WORKER is not None:
        yield None
        return
    _WORKER = _Worker()
    try:
        yield _WORKER
    finally:
        worker, _WORKER = _WORKER, None
        worker.close()


def in_child() -> bool:
    """True in a child made by ``run_isolated`` (or a stage worker)."""
    return _IN_CHILD


def worker_active() -> bool:
    """True inside ``separate_stages`` (stages run in the worker, not here)."""
    return _WORKER is not None


#: prctl option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: Seconds between two checks of the parent process id (the watch thread).
_WATCH_INTERVAL = 0.5


def _die_with_parent(parent: int) -> None:
    """Ends this child when ``parent`` dies: PR_SET_PDEATHSIG on Linux, plus a watch thread.

    PDEATHSIG fires when the parent thread that forked us ends; run_isolated
    waits for the child in that thread, so it fires exactly when the parent
    process dies. The check after it covers a parent that died before.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread below still ends us
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch, name="eq_tflite-parent-watch", daemon=True).start()


#: The janitor: waits until every holder of the pipe on stdin is gone, then
#: removes the child's scratch directory. Signals a terminal or service manager
#: sends to the whole group must not stop it before its cleanup.
_JANITOR = ("import os,shutil,signal,sys\n"
            "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
            "while os.read(0, 512): pass\n"
            "shutil.rmtree(sys.argv[1], ignore_errors=True)\n")


def _start_janitor(scratch: str) -> tuple[subprocess.Popen | None, int | None]:
    """Starts the janitor of ``scratch``; returns it and the pipe end the child must hold."""
    read_fd, write_fd = os.pipe()
    try:
        janitor = subprocess.Popen([sys.executable, "-I", "-S", "-c", _JANITOR, scratch],
                                   stdin=read_fd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:  # no janitor: the parent still removes scratch unless it is killed
        os.close(write_fd)
        return None, None
    finally:
        os.close(read_fd)
    return janitor, write_fd


def _end_janitor(janitor: subprocess.Popen | None) -> None:
    """Reaps the janitor (it ends as soon as the child is gone)."""
    if janitor is None:
        return
    try:
        janitor.wait(timeout=10)
    except subprocess.TimeoutExpired:
        janitor.kill()
        janitor.wait()


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
