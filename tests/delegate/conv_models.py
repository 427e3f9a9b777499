"""Tiny int8 .tflite models for the delegate tests, written directly with the
flatbuffer object API (no converter: exact control of zero points, scales,
weights and fused activations, and fast to build).

A model is a chain of layers on one NHWC int8 input.  Each layer is a
``Layer``: CONV_2D (claimable), or DEPTHWISE_CONV_2D (left to TFLite).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

PADDING = {"SAME": 0, "VALID": 1}
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
INT8, INT32 = 9, 2
CONV_2D, DEPTHWISE_CONV_2D = 3, 4


@dataclasses.dataclass
class Layer:
    """One convolution layer of a test model."""

    weights: np.ndarray            # int8, OHWI (conv) or 1HWC (depthwise)
    w_scales: np.ndarray           # float32 [cout] (or [1])
    bias: np.ndarray | None        # int32 [cout] or None
    out_scale: float
    out_zp: int
    stride: tuple[int, int] = (1, 1)   # (h, w)
    padding: str = "SAME"
    activation: str = "NONE"
    dilation: tuple[int, int] = (1, 1)
    depthwise: bool = False
    depth_multiplier: int = 1


def _quant(scales: Sequence[float], zps: Sequence[int], qdim: int = 0
           ) -> schema.QuantizationParametersT:
    q = schema.QuantizationParametersT()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [int(z) for z in zps]
    q.quantizedDimension = qdim
    return q


def build_model(input_shape: Sequence[int], in_scale: float, in_zp: int,
                layers: Sequence[Layer]) -> bytes:
    """Serialize a chain of convolutions as a .tflite flatbuffer."""
    model = schema.ModelT()
    model.version = 3
    model.description = "eq-tflite delegate test model"
    codes = []
    for code in (CONV_2D, DEPTHWISE_CONV_2D):
        oc = schema.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = code
        oc.version = 3
        codes.append(oc)
    model.operatorCodes = codes
    buffers = [schema.BufferT()]  # buffer 0: the empty sentinel
    tensors: list[schema.TensorT] = []

    def add_tensor(name, shape, ttype, quant, data=None) -> int:
        t = schema.TensorT()
        t.name = name
        t.shape = list(int(s) for s in shape)
        t.type = ttype
        t.quantization = quant
        if data is None:
            t.buffer = 0
        else:
            b = schema.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    cur = add_tensor("input", input_shape, INT8, _quant([in_scale], [in_zp]))
    cur_scale = in_scale
    n, h, w = input_shape[0], input_shape[1], input_shape[2]
    ops = []
    for i, layer in enumerate(layers):
        wt = np.asarray(layer.weights, np.int8)
        ws = np.asarray(layer.w_scales, np.float32)
        if layer.depthwise:
            cout = wt.shape[3]
            qdim = 3
        else:
            cout = wt.shape[0]
            qdim = 0
        kh, kw = wt.shape[1], wt.shape[2]
        fi = add_tensor(f"l{i}/filter", wt.shape, INT8,
                        _quant(ws, [0] * len(ws), qdim), wt)
        inputs = [cur, fi]
        if layer.bias is not None:
            bs = (np.float32(cur_scale) * np.broadcast_to(ws, (cout,))).astype(np.float32)
            bi = add_tensor(f"l{i}/bias", [cout], INT32,
                            _quant(bs, [0] * cout, 0),
                            np.asarray(layer.bias, np.int32))
            inputs.append(bi)
        sh, sw = layer.stride
        dh, dw = layer.dilation
        if layer.padding == "SAME":
            oh, ow = -(-h // sh), -(-w // sw)
        else:
            oh = (h - ((kh - 1) * dh + 1)) // sh + 1
            ow = (w - ((kw - 1) * dw + 1)) // sw + 1
        out = add_tensor(f"l{i}/output", [n, oh, ow, cout], INT8,
                         _quant([layer.out_scale], [layer.out_zp]))
        op = schema.OperatorT()
        op.inputs = inputs
        op.outputs = [out]
        if layer.depthwise:
            op.opcodeIndex = 1
            op.builtinOptionsType = schema.BuiltinOptions.DepthwiseConv2DOptions
            o = schema.DepthwiseConv2DOptionsT()
            o.depthMultiplier = layer.depth_multiplier
        else:
            op.opcodeIndex = 0
            op.builtinOptionsType = schema.BuiltinOptions.Conv2DOptions
            o = schema.Conv2DOptionsT()
        o.padding = PADDING[layer.padding]
        o.strideH, o.strideW = sh, sw
        o.dilationHFactor, o.dilationWFactor = dh, dw
        o.fusedActivationFunction = ACTIVATIONS[layer.activation]
        op.builtinOptions = o
        ops.append(op)
        cur, cur_scale, h, w = out, layer.out_scale, oh, ow

    sg = schema.SubGraphT()
    sg.tensors = tensors
    sg.operators = ops
    sg.inputs = [0]
    sg.outputs = [cur]
    sg.name = "main"
    model.subgraphs = [sg]
    model.buffers = buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def random_layer(rng: np.random.Generator, cin: int, cout: int, kh: int, kw: int,
                 in_scale: float, *, wbits: int = 8, stride: int = 1,
                 padding: str = "SAME", activation: str = "NONE",
                 with_bias: bool = True, dilation: int = 1,
                 depthwise: bool = False, depth_multiplier: int = 1,
                 scale_jitter: float = 2.0) -> Layer:
    """A layer with random weights (|w| <= 127, or <= 63 for wbits=7) and an
    output scale that keeps the outputs mostly in range."""
    wmax = 63 if wbits == 7 else 127
    if depthwise:
        cout = cin * depth_multiplier
        wt = rng.integers(-wmax, wmax + 1, size=(1, kh, kw, cout), dtype=np.int32)
    else:
        wt = rng.integers(-wmax, wmax + 1, size=(cout, kh, kw, cin), dtype=np.int32)
    if wbits == 8 and rng.random() < 0.3:  # make sure the extremes occur
        wt.reshape(-1)[rng.integers(0, wt.size)] = -wmax
        wt.reshape(-1)[rng.integers(0, wt.size)] = wmax
    ws = (rng.uniform(0.002, 0.02, size=cout)).astype(np.float32)
    k = kh * kw * (1 if depthwise else cin)
    acc_std = np.sqrt(k) * 74.0 * (wmax / 1.73)
    typical = in_scale * float(np.median(ws)) * acc_std
    out_scale = float(typical / 40.0 * rng.uniform(1.0 / scale_jitter, scale_jitter))
    bias = None
    if with_bias:
        bias = rng.integers(-(1 << 15), 1 << 15, size=cout, dtype=np.int32)
    return Layer(weights=wt.astype(np.int8), w_scales=ws, bias=bias,
                 out_scale=out_scale, out_zp=int(rng.integers(-128, 128)),
                 stride=(stride, stride), padding=padding, activation=activation,
                 dilation=(dilation, dilation), depthwise=depthwise,
                 depth_multiplier=depth_multiplier)
