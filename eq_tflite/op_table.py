"""The op table: one row per TFLite op type that eq-tflite simulates.

A row says, for one op type:

* ``run``: its float kernel (``eq_tflite.kernels``; weighted ops are
  ``simulate.Linear``), which ``simulate.Executor`` runs;
* ``int8``: how its deployed integer form is simulated, and how close that is
  to LiteRT's int8 kernel. Every op is simulated as its float kernel on the
  dequantized int8 inputs followed by the output's quantization
  (``grid.fake_quant_activation``). ``"requant"``: LiteRT's kernel computes
  exactly and rounds once (fixed-point requantization), so the simulation is
  within 1 LSB; ``"approx"``: LiteRT's kernel uses a lookup table or a
  fixed-point approximation (EXP, LOG, RSQRT, GELU, ...), within ``lsb`` LSB
  (the largest difference tests/test_op_table.py measured on its fixture,
  rounded up: 1 LSB for every row so far); ``"float"``: TFLite's own int8 converter keeps the op in
  float (a float island between DEQUANTIZE and QUANTIZE), simulated in float;
* ``stats``: how data-free statistics pass through it (``eq_tflite.moments``);
* ``island``: TFLite's int8 converter keeps this op in float inside a
  standard layer (NEG in Keras' LayerNormalization), so eq-tflite keeps it in
  float without ``--allow_float``, like TFLite does, and says so. Any other op
  left in float (user math such as SIN) still needs ``--allow_float``.

Which tensors share one scale and which outputs have fixed parameters are
the spec's rules (``quant_spec``): ``tied`` and ``fixed_range`` read them, so
the kernels' constraints stay in one place. Fused activations are the
``ACTIVATIONS`` rows. Adding an op is one row here plus its fixture case in
``tools/make_op_fixtures.py`` (tests/test_op_table.py checks every row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from eq_tflite import kernels as k
from eq_tflite.quant_spec import FIXED_OUTPUT_PARAMS, SAME_SCALE_OPS, WEIGHTED

Kernel = Callable[..., "np.ndarray | list[np.ndarray]"]


@dataclass(frozen=True)
class OpRule:
    """How one op type is simulated and how statistics pass through it (see module doc)."""

    run: Kernel | None
    stats: str = "elementwise"
    int8: str = "requant"
    lsb: float = 1.0
    island: bool = False


@dataclass(frozen=True)
class Activation:
    """A fused activation: its function, the interval it clips to (None: not a clip),
    and whether it is positively homogeneous (f(x/s) = f(x)/s for s > 0, as CLE needs).

    ``fn(x, out=None)`` is a numpy ufunc call: ``out=x`` applies it in place.
    """

    fn: Callable[..., np.ndarray]
    clip: tuple[float, float] | None
    homogeneous: bool = False


ACTIVATIONS: dict[str, Activation] = {
    "NONE": Activation(lambda x, out=None: x, (-np.inf, np.inf), True),
    "RELU": Activation(lambda x, out=None: np.maximum(x, 0, out=out), (0.0, np.inf), True),
    "RELU6": Activation(lambda x, out=None: np.clip(x, 0, 6, out=out), (0.0, 6.0)),
    "RELU_N1_TO_1": Activation(lambda x, out=None: np.clip(x, -1, 1, out=out), (-1.0, 1.0)),
    "RELU_0_TO_1": Activation(lambda x, out=None: np.clip(x, 0, 1, out=out), (0.0, 1.0)),
    "TANH": Activation(lambda x, out=None: np.tanh(x, out=out), None),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _act(name: str) -> Kernel:
    return k.unary(ACTIVATIONS[name].fn)


_same = OpRule  # readability: rows of same-scale ops (their tie is the spec's)

OPS: dict[str, OpRule] = {
    # weighted ops (simulate.Linear; statistics through the weights or BatchNorm)
    **{name: OpRule(None, "weighted") for name in WEIGHTED},
    # pooling, shapes, copies: values pass through (same scale in and out)
    "MAX_POOL_2D": _same(k.pool, "pass"),
    "AVERAGE_POOL_2D": _same(k.pool, "pass"),
    "RESHAPE": _same(k.reshape, "pass"),
    "SQUEEZE": _same(k.reshape, "pass"),
    "EXPAND_DIMS": _same(k.reshape, "pass"),
    "TRANSPOSE": _same(lambda g, op, xs: np.transpose(xs[0], k._ints(xs[1])), "pass"),
    "STRIDED_SLICE": _same(k.strided_slice, "pass"),
    "SLICE": _same(k.slice_, "pass"),
    "SPLIT": _same(k.split, "pass"),
    "SPLIT_V": _same(k.split_v, "pass"),
    "UNPACK": _same(k.unpack, "pass"),
    "PACK": _same(lambda g, op, xs: np.stack(xs, axis=op.options.axis), "concat"),
    "CONCATENATION": _same(lambda g, op, xs: np.concatenate(xs, axis=op.options.axis), "concat"),
    "GATHER": _same(lambda g, op, xs: np.take(xs[0], xs[1], axis=op.options.axis), "pass"),
    "GATHER_ND": _same(lambda g, op, xs: xs[0][tuple(np.moveaxis(np.asarray(xs[1]), -1, 0))], "pass"),
    "TILE": _same(k.tile, "pass"),
    "BROADCAST_TO": _same(k.broadcast_to, "pass"),
    "PAD": _same(k.pad, "pad"),
    "PADV2": _same(k.pad, "pad"),
    "MIRROR_PAD": _same(k.pad, "pass"),
    "SPACE_TO_BATCH_ND": _same(k.space_to_batch, "pad"),
    "BATCH_TO_SPACE_ND": _same(k.batch_to_space, "pass"),
    "DEPTH_TO_SPACE": _same(k.depth_to_space, "pass"),
    "SPACE_TO_DEPTH": _same(k.space_to_depth, "pass"),
    "RESIZE_NEAREST_NEIGHBOR": _same(k.resize_nearest, "pass"),
    "RESIZE_BILINEAR": _same(k.resize_bilinear, "pass", "approx", 1.0),
    "QUANTIZE": OpRule(lambda g, op, xs: np.asarray(xs[0], np.float32), "pass"),
    "DEQUANTIZE": OpRule(lambda g, op, xs: np.asarray(xs[0], np.float32), "pass"),
    # shape arithmetic (int32 tensors; no statistics)
    "SHAPE": OpRule(lambda g, op, xs: np.asarray(xs[0].shape, np.int32), "none"),
    "REDUCE_PROD": OpRule(k.reduce(np.prod), "none"),
    # index and comparison outputs (int32/int64/bool tensors; no statistics)
    "ARG_MAX": OpRule(lambda g, op, xs: np.argmax(xs[0], axis=int(np.ravel(xs[1])[0])), "none"),
    "ARG_MIN": OpRule(lambda g, op, xs: np.argmin(xs[0], axis=int(np.ravel(xs[1])[0])), "none"),
    **{name: OpRule(k.binary(fn), "none") for name, fn in (
        ("LESS", np.less), ("LESS_EQUAL", np.less_equal), ("GREATER", np.greater),
        ("GREATER_EQUAL", np.greater_equal), ("EQUAL", np.equal), ("NOT_EQUAL", np.not_equal))},
    # reductions
    "MEAN": OpRule(k.reduce(np.mean), "pass", "approx", 1.0),
    "SUM": OpRule(k.reduce(np.sum), "sum", "approx", 1.0),
    "REDUCE_MAX": _same(k.reduce(np.max), "pass"),
    "REDUCE_MIN": _same(k.reduce(np.min), "pass"),
    # arithmetic
    "ADD": OpRule(k.binary(np.add), "add"),
    "SUB": OpRule(k.binary(np.subtract), "add"),
    "MUL": OpRule(k.binary(np.multiply), "mul"),
    "DIV": OpRule(k.binary(np.divide), "div", "approx", 1.0),
    "SQUARED_DIFFERENCE": OpRule(k.binary(lambda a, b: (a - b) ** 2), "sqdiff", "approx", 1.0),
    "MAXIMUM": _same(k.binary(np.maximum), "max"),
    "MINIMUM": _same(k.binary(np.minimum), "min"),
    "BATCH_MATMUL": OpRule(k.batch_matmul, "matmul"),
    "POW": OpRule(k.binary(np.power), "elementwise", "float", island=True),
    # elementwise functions
    "EXP": OpRule(k.unary(np.exp), "elementwise", "approx", 1.0),
    "LOG": OpRule(k.unary(np.log), "elementwise", "approx", 1.0),
    "RSQRT": OpRule(k.unary(lambda x: 1.0 / np.sqrt(x)), "elementwise", "approx", 1.0),
    "SQRT": OpRule(k.unary(np.sqrt), "elementwise", "approx", 1.0),
    "ABS": OpRule(k.unary(np.abs), "elementwise"),
    "NEG": OpRule(k.unary(np.negative), "elementwise", "float", island=True),
    "SQUARE": OpRule(k.unary(np.square), "elementwise", "float", island=True),
    "ELU": OpRule(k.unary(lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
                  "elementwise", "float", island=True),
    "SIN": OpRule(k.unary(np.sin), "elementwise", "float"),
    "COS": OpRule(k.unary(np.cos), "elementwise", "float"),
    "CUMSUM": OpRule(k.cumsum, "sum", "float"),
    # activations
    "RELU": OpRule(_act("RELU"), "clip"),
    "RELU6": OpRule(_act("RELU6"), "clip"),
    "RELU_N1_TO_1": OpRule(_act("RELU_N1_TO_1"), "clip"),
    "RELU_0_TO_1": OpRule(_act("RELU_0_TO_1"), "clip"),
    "LEAKY_RELU": OpRule(lambda g, op, xs: np.where(xs[0] >= 0, xs[0], xs[0] * op.options.alpha)),
    "PRELU": OpRule(k.binary(lambda x, a: np.where(x >= 0, x, x * a)), "prelu"),
    "HARD_SWISH": OpRule(k.unary(lambda x: x * np.clip(x + 3, 0, 6) / 6), "elementwise",
                         "approx", 1.0),
    "GELU": OpRule(k.gelu, "elementwise", "approx", 1.0),
    "LOGISTIC": OpRule(k.unary(_sigmoid), "fixed"),
    "TANH": OpRule(_act("TANH"), "fixed"),
    "SOFTMAX": OpRule(k.softmax, "fixed", "approx", 1.0),
    "LOG_SOFTMAX": OpRule(k.log_softmax, "fixed", "approx", 1.0),
}

#: Ops TFLite's int8 converter can emit with int8 kernels: the quantization spec's list
#: (https://ai.google.dev/edge/litert/models/quantization_spec) and those its MLIR
#: quantizer was seen to emit in tools/make_op_fixtures.py. Each is in ``OPS`` or refused by
#: name before a conversion starts (tests/test_op_table.py).
INT8_CONVERTER_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "MAX_POOL_2D", "MUL", "RESHAPE", "RESIZE_BILINEAR", "SOFTMAX",
    "SPACE_TO_DEPTH", "TANH", "PAD", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND",
    "TRANSPOSE", "MEAN", "SUB", "SUM", "SQUEEZE", "GATHER_ND", "LOG_SOFTMAX", "MAXIMUM", "ARG_MAX",
    "MINIMUM", "ARG_MIN", "LESS", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SLICE", "EQUAL",
    "NOT_EQUAL", "SHAPE", "QUANTIZE", "DEQUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1",
    "LEAKY_RELU", "TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "STRIDED_SLICE",
    "SPLIT", "SPLIT_V", "UNPACK", "PACK", "MIRROR_PAD", "TILE", "EXPAND_DIMS", "REDUCE_MAX",
    "REDUCE_MIN", "EXP", "LOG", "RSQRT", "SQRT", "ABS", "DIV", "SQUARED_DIFFERENCE",
    "BATCH_MATMUL", "GELU", "PRELU", "HARD_SWISH", "BROADCAST_TO",
})

#: Op types the executor can run.
SIMULATED = frozenset(OPS)
#: Float islands kept without --allow_float (see the module doc).
ISLANDS = frozenset(name for name, rule in OPS.items() if rule.island)


def rule(kind: str) -> OpRule | None:
    """The row of op type ``kind`` (None: not simulated)."""
    return OPS.get(kind)


def tied(kind: str) -> bool:
    """True when the spec ties the op's data input and outputs to one (scale, zero point)."""
    return kind in SAME_SCALE_OPS


def fixed_range(kind: str) -> tuple[float, float] | None:
    """The real interval of a fixed-parameter int8 output (SOFTMAX [0, 255/256], ...), else None."""
    if kind not in FIXED_OUTPUT_PARAMS:
        return None
    scale, zp = FIXED_OUTPUT_PARAMS[kind]
    return (-128 - zp) * scale, (127 - zp) * scale


def float_tensors(graph) -> frozenset[int]:
    """Tensors a deployed model keeps in float: outputs of ``"float"`` rows that only
    ``"float"`` rows read, or that are model outputs (no QUANTIZE follows them)."""
    def is_float(kind: str) -> bool:
        row = OPS.get(kind)
        return row is not None and row.int8 == "float"

    readers: dict[int, list[str]] = {}
    for op in graph.ops:
        for t in op.inputs:
            readers.setdefault(t, []).append(op.type)
    return frozenset(t for op in graph.ops if is_float(op.type) for t in op.outputs
                     if t >= 0 and (t in graph.outputs
                                    or (readers.get(t) and all(map(is_float, readers[t])))))


def unsupported(op_types: "set[str] | frozenset[str]", activations: "set[str]" = frozenset()
                ) -> list[str]:
    """The op types and fused activations of a model that the table cannot simulate, sorted."""
    return sorted({t for t in op_types if t not in OPS}
                  | {a for a in activations if a not in ACTIVATIONS})
