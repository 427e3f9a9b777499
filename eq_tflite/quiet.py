"""Keeps TensorFlow's C++ log spam out of the user's terminal (unless --verbose)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

_VERBOSE = False


def set_verbose(verbose: bool) -> None:
    """Turns TF logging on or off for the rest of the process."""
    global _VERBOSE
    _VERBOSE = verbose
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GLOG_minloglevel", "3")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences file descriptors 1 and 2 (C++ writes) for the enclosed TF calls."""
    if _VERBOSE:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)
