"""LiteRT's value of every requested tensor, one sample at a time (works for fixed-batch models)."""
from __future__ import annotations

import numpy as np

from eq_tflite import runtime


def litert_tensors(model: bytes, x: np.ndarray, tensors, per_sample: bool = False) -> dict:
    """tensor index -> values over ``x`` (concatenated, or a list per sample with ``per_sample``)."""
    interp = runtime.make_interpreter(model, preserve_all_tensors=True)
    index = interp.get_input_details()[0]["index"]
    out: dict[int, list[np.ndarray]] = {t: [] for t in tensors}
    for sample in x:
        interp.set_tensor(index, sample[None])
        interp.invoke()
        for t in tensors:
            out[t].append(interp.get_tensor(t).copy())
    return out if per_sample else {t: np.concatenate(v) for t, v in out.items()}
