"""Synthetic int8 models and inputs for the latency benchmarks
(benchmark_latency.py, benchmark_kernels.py, benchmark_boundary.py)."""

from __future__ import annotations

import numpy as np


def build_conv_model(h: int, cin: int, cout: int, k: int, stride: int, wbits: int,
                     rng: np.random.Generator) -> bytes:
    """int8 single-conv model from TF's converter, then 7-bit weights.
    cout == 0: a depthwise convolution (depth multiplier 1)."""
    import tensorflow as tf

    inp = tf.keras.Input((h, h, cin), batch_size=1)
    if cout == 0:
        out = tf.keras.layers.DepthwiseConv2D(k, strides=stride, padding="same",
                                              activation="relu")(inp)
    else:
        out = tf.keras.layers.Conv2D(cout, k, strides=stride, padding="same",
                                     activation="relu")(inp)
    return quantize_keras(tf.keras.Model(inp, out), wbits, rng)


def quantize_keras(model, wbits: int, rng: np.random.Generator) -> bytes:
    """int8 model (int8 input and output) from TF's converter, calibrated on
    random inputs; then every CONV_2D / DEPTHWISE_CONV_2D filter gets random
    weights in [-63, 63] (wbits=7) or [-127, 127], keeping the real range."""
    import tensorflow as tf
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])

    def representative():
        for _ in range(4):
            yield [rng.uniform(-1, 1, size=(1, *shape)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    flat = conv.convert()

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    sg = m.subgraphs[0]
    wmax = 63 if wbits == 7 else 127
    for op in sg.operators:
        if m.operatorCodes[op.opcodeIndex].builtinCode not in (
                schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D):
            continue
        t = sg.tensors[op.inputs[1]]
        # Un-share the buffer before rewriting it (the converter dedups).
        buf = schema.BufferT()
        w = rng.integers(-wmax, wmax + 1, size=tuple(t.shape)).astype(np.int8)
        buf.data = np.frombuffer(w.tobytes(), np.uint8)
        m.buffers.append(buf)
        t.buffer = len(m.buffers) - 1
        # keep the real-valued weight range: scale * 127 -> scale' * wmax
        t.quantization.scale = [s * 127.0 / wmax for s in t.quantization.scale]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:  # bias scale = s_in * s_w
            bt = sg.tensors[op.inputs[2]]
            bt.quantization.scale = [s * 127.0 / wmax for s in bt.quantization.scale]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def _inputs_for(interp, rng: np.random.Generator) -> list[np.ndarray]:
    xs = []
    for det in interp.get_input_details():
        shape, dtype = det["shape"], det["dtype"]
        if dtype == np.int8:
            _, zp = det["quantization"]
            lo = int(np.clip(zp - 64, -128, 0))
            xs.append(rng.integers(lo, lo + 128, size=shape).astype(np.int8))  # 128 levels
        elif dtype == np.uint8:
            xs.append(rng.integers(0, 128, size=shape).astype(np.uint8))
        elif np.issubdtype(dtype, np.floating):
            xs.append(rng.uniform(-1, 1, size=shape).astype(dtype))
        else:
            xs.append(rng.integers(0, 2, size=shape).astype(dtype))
    return xs
