"""Fashion-MNIST loader reading the raw IDX gzip files (no extra dependencies)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ROOT_ENV_VAR = "EQ_TFLITE_FASHION_MNIST"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_PREFIXES = {"train": "train", "test": "t10k"}


def _resolve_root(root: str | None) -> Path:
    """Return the dataset directory: `root`, else the env var, else the Debian default."""
    return Path(root or os.environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes, checking its magic number and size."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path} (run `apt-get install -y dataset-fashion-mnist` "
            f"or set {ROOT_ENV_VAR})"
        )
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"corrupt IDX gzip file {path}: {e}") from e
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise ValueError(f"corrupt IDX file {path}: truncated header")
    header = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if header[0] != magic:
        raise ValueError(f"corrupt IDX file {path}: magic {header[0]} != {magic}")
    shape = tuple(int(d) for d in header[1:])
    if len(data) - header_len != int(np.prod(shape)):
        raise ValueError(f"corrupt IDX file {path}: payload size does not match shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def load_fashion_mnist(split: str = "test", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split ("train" or "test").

    Returns x as float32 in [0, 1] with shape (N, 28, 28, 1) and y as int64 labels of shape (N,).
    """
    if split not in _PREFIXES:
        raise ValueError(f"split must be one of {sorted(_PREFIXES)}, got {split!r}")
    directory = _resolve_root(root)
    prefix = _PREFIXES[split]
    images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", IMAGES_MAGIC, ndim=3)
    labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", LABELS_MAGIC, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"image/label count mismatch in {directory}: {images.shape[0]} vs {labels.shape[0]}")
    x = (images.astype(np.float32) / 255.0)[..., np.newaxis]
    return x, labels.astype(np.int64)
