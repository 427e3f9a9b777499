"""The TFLite int8 quantization spec as data: per-op constraints of the kernels.

A bottom-level module (imports nothing of the package): ``graph``, ``resolve``,
``simulate``, ``rewrite`` and ``verify`` all read these rules from here. The op
table (``eq_tflite.op_table``: kernels, simulation, data-free rules) reads its
tie and fixed-range rules from here too.
"""
from __future__ import annotations

#: Ops whose int8 kernels require input and output to share (scale, zero point).
SAME_SCALE_OPS = frozenset({
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
    "PAD", "PADV2", "MIRROR_PAD", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V",
    "GATHER", "GATHER_ND", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "BATCH_TO_SPACE_ND",
    "SPACE_TO_BATCH_ND", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "MAXIMUM", "MINIMUM",
    "PACK", "UNPACK", "TILE", "BROADCAST_TO", "REDUCE_MAX", "REDUCE_MIN",
})

#: Same-scale ops all of whose inputs are data (the others tie only their data input).
_ALL_INPUTS_TIED = frozenset({"CONCATENATION", "PACK", "MAXIMUM", "MINIMUM"})
#: Same-scale ops with several data inputs: an input whose scale is fixed by the spec
#: (a logistic among box coordinates) is requantized into theirs (TFLite inserts a QUANTIZE).
MULTI_INPUT_TIED_OPS = _ALL_INPUTS_TIED
#: Position of the data input where it is not input 0 (SPLIT's inputs are (axis, data)).
_DATA_INPUT = {"SPLIT": 1}


def tied_tensors(kind: str, inputs: list[int], outputs: list[int]) -> list[int]:
    """Tensor indices that must share one (scale, zero point); [] unless a same-scale op."""
    if kind not in SAME_SCALE_OPS:
        return []
    pos = _DATA_INPUT.get(kind, 0)
    data = list(inputs) if kind in _ALL_INPUTS_TIED else list(inputs[pos:pos + 1])
    return [i for i in data + list(outputs) if i >= 0]


#: (scale, zero point) of int8 outputs fixed by the spec (the kernels check them).
FIXED_OUTPUT_PARAMS: dict[str, tuple[float, int]] = {
    "SOFTMAX": (1.0 / 256, -128),
    "LOGISTIC": (1.0 / 256, -128),
    "TANH": (1.0 / 128, 0),
    "LOG_SOFTMAX": (16.0 / 256, 127),
}
FIXED_OUTPUT_OPS = frozenset(FIXED_OUTPUT_PARAMS)

#: Weighted ops: (data input position, weight position, bias position, output-channel axis).
WEIGHTED: dict[str, tuple[int, int, int, int]] = {
    "CONV_2D": (0, 1, 2, 0),
    "DEPTHWISE_CONV_2D": (0, 1, 2, 3),
    "FULLY_CONNECTED": (0, 1, 2, 0),
    "TRANSPOSE_CONV": (2, 1, 3, 0),
}
WEIGHTED_OPS = tuple(WEIGHTED)

#: Ops that only change the storage type (float <-> int8 at the model's edges).
EDGE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})

#: Largest int32 bias magnitude written (symmetric int32 range).
INT32_MAX = 2 ** 31 - 1
