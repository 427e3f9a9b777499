"""Atomic file writes: a reader, a crash or a kill never sees a partial file.

``write_atomic`` writes one file, ``write_all_atomic`` a group (a report's
Markdown, CSV and PNG): every file is first written in full under a temp name
next to its target, then all are renamed into place; if any write fails
(a full disk, a read-only directory), every temp file is removed and no target
is touched.

The temp file is, where Linux allows (``O_TMPFILE``), an unnamed inode that
only gets a name after all its bytes are written and synced, just before the
rename: a SIGKILL during the write leaves nothing behind. Elsewhere it is a
``mkstemp`` file ``.NAME.XXXXXXXX.tmp`` (NAME shortened to fit the file
system's name limit). SIGINT, SIGTERM and SIGHUP are held back while a temp
name is created, so the handler's exception always finds it to remove.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from eq_tflite.errors import EqTfliteError

#: Characters mkstemp adds to the prefix: 8 random ones plus ".tmp".
_TEMP_EXTRA = 8 + len(".tmp")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file + rename: never a partial file.

    The file gets the permissions a plain ``open(path, "w")`` would give
    (0666 minus the umask), not mkstemp's private 0600.
    """
    write_all_atomic({Path(path): data})


def write_all_atomic(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Writes every ``{path: data}``: all of them, or (EqTfliteError) none."""
    temps: list[Path] = []
    current = None
    try:
        staged = []
        for path, data in files.items():
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_stage(current, data, temps), current))
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
            temps.remove(tmp)
    except BaseException as err:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise EqTfliteError(f"cannot write {short(current)}: "
                                f"{err.strerror or type(err).__name__}") from None
        raise


def _stage(path: Path, data: bytes, temps: list[Path]) -> Path:
    """Writes ``data`` in full under a temp name next to ``path``; returns that name."""
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except (AttributeError, OSError):  # no O_TMPFILE here (platform or file system)
        return _stage_named(path, data, temps)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        for _ in range(100):
            tmp = path.parent / f"{_temp_prefix(path)}{secrets.token_hex(4)}.tmp"
            with signals_deferred():
                try:
                    os.link(f"/proc/self/fd/{f.fileno()}", tmp, follow_symlinks=True)
                except FileExistsError:
                    continue
                except OSError:  # no /proc: write it again the portable way
                    break
                temps.append(tmp)
            return tmp
    return _stage_named(path, data, temps)


def _stage_named(path: Path, data: bytes, temps: list[Path]) -> Path:
    with signals_deferred():
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        temps.append(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT, SIGTERM and SIGHUP back (this thread) until the block ends."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def name_max(directory: Path) -> int:
    """The file system's longest file name in bytes (255 if unknown)."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _temp_prefix(path: Path) -> str:
    """``.NAME.``, with NAME cut so the whole temp name fits the name limit."""
    room = name_max(existing_ancestor(path.parent)) - _TEMP_EXTRA - 2
    name = path.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}."


def temp_probe(path: Path, directory: Path) -> None:
    """Creates and removes a temp file for ``path`` in ``directory`` (OSError if it cannot)."""
    with signals_deferred():
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)


def existing_ancestor(path: Path) -> Path:
    """``path`` (absolute) or its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def short(path: Path | None, limit: int = 120) -> str:
    """A path for a one-line message (the middle of a long one elided)."""
    text = str(path)
    return text if len(text) <= limit else text[:limit // 2] + "..." + text[-limit // 2:]
