"""An int8 model built from a plan's ranges, without any data (the data-free path).

TFLite's calibrator only records each tensor's min/max in the float model;
the MLIR quantizer then builds the int8 model from them. Writing the plan's
ranges as those min/max gives the same int8 structure with no sample ever
run. The rewriter then writes the plan's exact numbers onto it, as on the
calibrated path.
"""
from __future__ import annotations

from typing import Mapping

from eq_tflite.errors import EqTfliteError, UnsupportedOpsError, first_line
from eq_tflite.op_table import ISLANDS
from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb
from eq_tflite.io.tflite_int8 import float_ops_left


def int8_from_ranges(float_model: bytes, graph: Graph, ranges: Mapping[str, tuple[float, float]],
                     *, allow_float: bool = False, int8_io: bool = False) -> bytes:
    """The int8 model TFLite's quantizer makes when tensors carry ``ranges`` as min/max."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    model = fb.parse_model(float_model)
    sg = model.subgraphs[0]
    missing = []
    for i in graph.activation_tensors():
        name = graph.tensors[i].name
        if name not in ranges:
            missing.append(name)
            continue
        lo, hi = ranges[name]
        q = fb.schema.QuantizationParametersT()
        q.min, q.max = [min(float(lo), 0.0)], [max(float(hi), 0.0)]
        sg.tensors[i].quantization = q
    if missing:
        raise EqTfliteError(f"the data-free plan has no range for {len(missing)} tensors "
                            f"(first: {missing[0]})")
    try:
        out = bytes(tfl_convert.mlir_quantize(
            fb.serialize_model(model), fully_quantize=int8_io,
            input_data_type=tf.int8 if int8_io else tf.float32,
            output_data_type=tf.int8 if int8_io else tf.float32))
    except Exception as err:
        raise EqTfliteError(f"TFLite int8 quantization failed: {first_line(err)}") from None
    float_ops = [op for op in float_ops_left(out) if op not in ISLANDS]
    if float_ops and not allow_float:  # ISLANDS stay float as in TFLite's own conversion
        raise UnsupportedOpsError(float_ops)
    return out
