"""File safety: an output path checked before any work, never an input overwritten, one-line read errors.

``check_output_path`` checks that :func:`eq_tflite.io.atomic.write_atomic`
(the writer of every file this tool makes) can write a path.
"""
from __future__ import annotations

import os
from pathlib import Path

from eq_tflite.errors import EqTfliteError
from eq_tflite.io.atomic import existing_ancestor, name_max, short as _short, temp_probe


def check_output_path(path: str | os.PathLike, inputs: tuple = (), what: str = "output") -> Path:
    """Checks, before any work, that :func:`write_atomic` can write ``path``.

    Refuses: an empty path or a name over the file system's limit, an existing
    directory, a parent that is a file, an unwritable location, ``path`` being
    one of ``inputs`` (it would overwrite the user's model or data), and
    ``path`` inside an input that is a directory (a SavedModel: any depth,
    symlinks resolved). Nothing is created: a temp file is probed and removed.
    """
    if str(path) == "":
        raise EqTfliteError(f"empty {what} path")
    p = Path(path)
    if not p.name or p.name in (".", ".."):
        raise EqTfliteError(f"{what} {_short(p)} is not a file name")
    try:
        ancestor = existing_ancestor(p.parent)
        limit = name_max(ancestor)
        if len(os.fsencode(p.name)) > limit:
            raise EqTfliteError(f"{what} file name is {len(os.fsencode(p.name))} bytes long, over the "
                                f"file system's limit of {limit}")
        if p.is_dir():
            raise EqTfliteError(f"{what} {_short(p)} is a directory")
        check_not_inputs(p, inputs, what)
        if not ancestor.is_dir():
            raise EqTfliteError(f"cannot write {what} {_short(p)}: {_short(ancestor)} is a file, "
                                "not a directory")
        temp_probe(p, ancestor)
    except OSError as err:
        raise EqTfliteError(f"cannot write {what} {_short(p)}: {err.strerror or type(err).__name__}") from None
    return p


def check_not_inputs(path: Path, inputs: tuple, what: str = "output") -> None:
    """Refuses ``path`` if it is one of ``inputs`` or inside an input directory."""
    for src in inputs:
        if src is None or isinstance(src, (bytes, bytearray)) or not isinstance(src, (str, os.PathLike)):
            continue
        src = Path(src)
        if _same_path(path, src):
            raise EqTfliteError(f"{what} {_short(path)} is the input {_short(src)}; refusing to "
                                "overwrite it (choose another --output)")
        if _inside(path, src):
            raise EqTfliteError(f"{what} {_short(path)} is inside the input directory {_short(src)}; "
                                "refusing to write into it (choose another --output)")


def _inside(path: Path, directory: Path) -> bool:
    """True if ``path`` lies (at any depth, symlinks resolved) in the existing ``directory``."""
    try:
        if not directory.is_dir():
            return False
        real, folder = os.path.realpath(path), os.path.realpath(directory)
        return real != folder and os.path.commonpath([real, folder]) == folder
    except (OSError, ValueError):
        return False


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def read_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; EqTfliteError (one line) for anything but a readable file."""
    if str(path) == "":
        raise EqTfliteError(f"empty {what} path")
    p = Path(path)
    try:
        if p.is_dir():
            raise EqTfliteError(f"{p} is a directory, not a {what}")
        return p.read_bytes()
    except FileNotFoundError:
        raise EqTfliteError(f"no such file: {p}") from None
    except OSError as err:
        raise EqTfliteError(f"cannot read {_short(p)}: {err.strerror or type(err).__name__}") from None
