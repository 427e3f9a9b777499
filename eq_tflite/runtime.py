"""One place that picks the TFLite runtime.

Order: ``ai_edge_litert`` (the maintained LiteRT runtime), then the legacy
``tflite_runtime``, then ``tf.lite`` (deprecated in TF 2.20+, and heavy).
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from eq_tflite.errors import EqTfliteError, first_line

_MODULE: ModuleType | None = None


def interpreter_module() -> ModuleType:
    """Returns the module providing ``Interpreter`` and ``load_delegate``."""
    global _MODULE
    if _MODULE is None:
        try:
            from ai_edge_litert import interpreter as mod
        except ImportError:
            try:
                from tflite_runtime import interpreter as mod  # type: ignore
            except ImportError:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                import tensorflow as tf
                mod = tf.lite  # type: ignore[assignment]
        _MODULE = mod
    return _MODULE


class LiteRTError(EqTfliteError, ValueError):
    """LiteRT refused or failed to run a model (also a ValueError, as LiteRT raises)."""


def make_interpreter(model: bytes, *, builtin_kernels: bool = True,
                     preserve_all_tensors: bool = False,
                     delegates: Sequence[Any] | None = None,
                     num_threads: int | None = None) -> Any:
    """Creates and allocates an interpreter for ``model``.

    ``builtin_kernels=True`` uses TFLite's own kernels
    (BUILTIN_WITHOUT_DEFAULT_DELEGATES: fixed-point requantization, the
    reference for bit-exactness); False uses the default resolver, which adds
    XNNPACK.
    """
    mod = interpreter_module()
    resolver = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_kernels \
        else mod.OpResolverType.AUTO
    try:
        interp = mod.Interpreter(
            model_content=bytes(model),
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
            experimental_delegates=list(delegates) if delegates else None,
            num_threads=num_threads)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        raise LiteRTError(f"LiteRT cannot load the model: {first_line(err)}") from None
    return interp


def _to_input(detail: dict, x: np.ndarray) -> np.ndarray:
    """Converts float data to what the input tensor takes (quantizes int8 I/O)."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    if not np.issubdtype(dtype, np.integer):
        raise LiteRTError(f"model input {detail['name']!r} has type {np.dtype(dtype).name}; "
                          "only float32 and integer inputs are supported")
    scale, zp = detail["quantization"]
    info = np.iinfo(dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.round(x / scale) + zp if scale > 0 else np.asarray(x)
        return np.nan_to_num(np.clip(q, info.min, info.max)).astype(dtype)


def _from_output(detail: dict, y: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.astype(np.float32)
    scale, zp = detail["quantization"]
    with np.errstate(over="ignore", invalid="ignore"):
        return ((y.astype(np.float32) - zp) * (scale if scale > 0 else 1.0)).astype(np.float32)


def run_model(interp: Any, inputs: dict[str, np.ndarray] | Sequence[np.ndarray],
              batch_size: int = 1) -> list[np.ndarray]:
    """Runs ``interp`` over all samples; returns float outputs stacked on axis 0.

    ``inputs`` maps input tensor names to (N, ...) arrays, or lists arrays in
    input order. Quantized (int8) inputs/outputs are converted with their
    tensor's scale and zero point, so callers always see real values. With
    ``batch_size > 1`` the inputs are resized when the model allows it (models
    with a batch-1 RESHAPE fall back to one sample at a time).
    """
    in_details = interp.get_input_details()
    arrays = [inputs[d["name"]] for d in in_details] if isinstance(inputs, dict) else list(inputs)
    n = arrays[0].shape[0]
    batch = resize_inputs(interp, in_details, arrays, min(batch_size, n))
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        chunks = [a[i:i + batch] for a in arrays]
        if chunks[0].shape[0] != batch:
            resize_inputs(interp, in_details, chunks, chunks[0].shape[0])
        try:
            set_inputs(interp, chunks)
            interp.invoke()
        except (RuntimeError, ValueError) as err:
            raise LiteRTError(f"LiteRT cannot run the model: {first_line(err)}") from None
        details = interp.get_output_details()
        if not outs:
            outs = [[] for _ in details]
        for k, d in enumerate(details):
            outs[k].append(_from_output(d, interp.get_tensor(d["index"])))
    return [np.concatenate(o, axis=0) for o in outs]


#: Bytes of kept tensors per batch when every tensor is kept (``iterate_tensors``).
KEPT_BYTES = 256 << 20


class _KeptTensors(Mapping):
    """{tensor index: value} of one invoked batch, each value copied out when it is read.

    A consumer that reads one tensor at a time holds one copy at a time, not a
    copy of every kept tensor of the batch.
    """

    def __init__(self, interp: Any, tensors: Sequence[int], batch: list[int]):
        self._interp, self._tensors = interp, list(dict.fromkeys(tensors))
        self._known = set(self._tensors)
        self._batch, self._mine = batch, batch[0]

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self._known:
            raise KeyError(i)
        if self._batch[0] != self._mine:  # the interpreter holds a later batch now
            raise RuntimeError("kept tensors read after the next batch ran")
        return self._interp.get_tensor(i)

    def __iter__(self) -> Iterator[int]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _sample_bytes(interp: Any, batch: int) -> int:
    """Bytes per sample of the allocated model's tensors that carry the batch (``batch`` > 1)."""
    total = 0
    for d in interp.get_tensor_details():
        shape = d["shape"]
        if len(shape) and shape[0] == batch:
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(d["dtype"]).itemsize
    return max(total // batch, 1)


def iterate_tensors(model: bytes, arrays: Sequence[np.ndarray], tensors: Sequence[int],
                    batch_size: int = 16,
                    wrap: Callable[[range, int], Iterable[int]] | None = None,
                    max_bytes: int = KEPT_BYTES,
                    ) -> Iterator[Mapping[int, np.ndarray]]:
    """Runs ``model`` (builtin kernels, every tensor kept) over ``arrays`` (in input order)
    batch by batch and yields {tensor index: value} for ``tensors`` after each batch.

    The interpreter keeps every tensor of a batch, so a batch is at most
    ``batch_size`` samples and at most ``max_bytes`` of tensors (at least one
    sample). Values are copied out as they are read, valid until the next batch.
    ``wrap(starts, batch)`` may wrap the batch starts, e.g. in a progress bar.
    """
    interp = make_interpreter(model, preserve_all_tensors=True)
    details = interp.get_input_details()
    n = arrays[0].shape[0]
    batch = resize_inputs(interp, details, arrays, min(batch_size, n))
    if batch > 1:
        fits = max(1, min(batch, max_bytes // _sample_bytes(interp, batch)))
        if fits < batch:
            batch = resize_inputs(interp, details, arrays, fits)
    starts, current = range(0, n, batch), [0]
    for start in (wrap(starts, batch) if wrap else starts):
        current[0] += 1
        chunks = [a[start:start + batch] for a in arrays]
        if chunks[0].shape[0] != batch:
            resize_inputs(interp, details, chunks, chunks[0].shape[0])
        set_inputs(interp, chunks)
        interp.invoke()
        yield _KeptTensors(interp, tensors, current)


def set_inputs(interp: Any, arrays: Sequence[np.ndarray]) -> None:
    """Sets the inputs, in input order, converting real values to the input types."""
    for d, a in zip(interp.get_input_details(), arrays):
        interp.set_tensor(d["index"], _to_input(d, a))


def resize_inputs(interp: Any, details: list[dict], arrays: Sequence[np.ndarray], batch: int) -> int:
    """Resizes the inputs to ``batch`` samples if the model allows it, else to 1; returns which."""
    for b in dict.fromkeys((batch, 1)):
        try:
            for d, a in zip(details, arrays):
                interp.resize_tensor_input(d["index"], (b, *a.shape[1:]), strict=False)
            interp.allocate_tensors()
            if b == 1 or _batch_follows_inputs(interp):
                return b
        except (RuntimeError, ValueError):
            continue
    raise LiteRTError("LiteRT cannot allocate the model for one sample")


def _batch_follows_inputs(interp: Any) -> bool:
    """False if an op's output keeps batch 1 after a batch resize.

    TRANSPOSE_CONV takes its output shape from a constant operand (e.g. a
    lowered MediaPipe Convolution2DTransposeBias): it allocates at any batch
    but fails when invoked, so such models run one sample at a time.
    """
    ops = getattr(interp, "_get_ops_details", None)
    if ops is None:
        return True
    shapes = {d["index"]: d["shape"] for d in interp.get_tensor_details()}
    for op in ops():
        if op["op_name"] == "TRANSPOSE_CONV" and len(op["inputs"]) >= 3 and len(op["outputs"]):
            x, y = shapes.get(op["inputs"][2]), shapes.get(op["outputs"][0])
            if x is not None and y is not None and len(x) and len(y) and x[0] != y[0]:
                return False
    return True
