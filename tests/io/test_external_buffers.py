"""Buffers stored after the FlatBuffer (Buffer.offset/size), as ai-edge-quantizer writes them."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite.errors import EqTfliteError
from eq_tflite.io.codec import parse_model, serialize_model
from eq_tflite.runtime import make_interpreter, run_model


def _externalize(model_bytes: bytes, truncate: int = 0) -> tuple[bytes, int]:
    """The same model with its largest buffer moved behind the FlatBuffer (offset from the file start)."""
    model = parse_model(model_bytes)
    sizes = [0 if b.data is None else len(b.data) for b in model.buffers]
    b = int(np.argmax(sizes))
    payload = bytes(np.asarray(model.buffers[b].data, np.uint8))
    model.buffers[b].data = None
    model.buffers[b].offset, model.buffers[b].size = 1 << 40, len(payload)   # placeholder, same width
    head = serialize_model(model)
    start = (len(head) + 15) // 16 * 16
    model.buffers[b].offset = start
    head = serialize_model(model)
    assert len(head) <= start
    data = head + b"\0" * (start - len(head)) + payload
    return (data[:len(data) - truncate] if truncate else data), b


def test_external_buffers_are_read(small_float_tflite, small_calibration):
    external, b = _externalize(small_float_tflite)
    model = parse_model(external)
    assert (model.buffers[b].offset or 0) == 0
    np.testing.assert_array_equal(model.buffers[b].data, parse_model(small_float_tflite).buffers[b].data)
    x = small_calibration[:4]
    np.testing.assert_array_equal(run_model(make_interpreter(serialize_model(model)), [x])[0],
                                  run_model(make_interpreter(small_float_tflite), [x])[0])


def test_external_buffer_past_the_end_is_refused(small_float_tflite):
    external, b = _externalize(small_float_tflite, truncate=8)
    with pytest.raises(EqTfliteError, match=f"buffer {b} points at bytes"):
        parse_model(external)
