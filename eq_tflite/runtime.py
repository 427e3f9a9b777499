"""One place that picks the TFLite runtime.

Order: ``ai_edge_litert`` (the maintained LiteRT runtime), then the legacy
``tflite_runtime``, then ``tf.lite`` (deprecated in TF 2.20+, and heavy).
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Sequence

import numpy as np

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
    interp = mod.Interpreter(
        model_content=bytes(model),
        experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=preserve_all_tensors,
        experimental_delegates=list(delegates) if delegates else None,
        num_threads=num_threads)
    interp.allocate_tensors()
    return interp


def _to_input(detail: dict, x: np.ndarray) -> np.ndarray:
    """Converts float data to what the input tensor takes (quantizes int8 I/O)."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zp = detail["quantization"]
    q = np.round(x / scale) + zp
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _from_output(detail: dict, y: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.astype(np.float32)
    scale, zp = detail["quantization"]
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def run_model(interp: Any, inputs: dict[str, np.ndarray] | Sequence[np.ndarray],
              batch_size: int = 1) -> list[np.ndarray]:
    """Runs ``interp`` sample by sample; returns float outputs stacked on axis 0.

    ``inputs`` maps input tensor names to (N, ...) arrays, or lists arrays in
    input order. Quantized (int8) inputs/outputs are converted with their
    tensor's scale and zero point, so callers always see real values.
    """
    in_details = interp.get_input_details()
    out_details = interp.get_output_details()
    if isinstance(inputs, dict):
        arrays = [inputs[d["name"]] for d in in_details]
    else:
        arrays = list(inputs)
    n = arrays[0].shape[0]
    outs: list[list[np.ndarray]] = [[] for _ in out_details]
    for i in range(0, n, batch_size):
        for d, a in zip(in_details, arrays):
            chunk = a[i:i + batch_size]
            if tuple(d["shape"]) != chunk.shape:
                interp.resize_tensor_input(d["index"], chunk.shape)
                interp.allocate_tensors()
            interp.set_tensor(d["index"], _to_input(d, chunk))
        interp.invoke()
        for k, d in enumerate(out_details):
            outs[k].append(_from_output(d, interp.get_tensor(d["index"])))
    return [np.concatenate(o, axis=0) for o in outs]
