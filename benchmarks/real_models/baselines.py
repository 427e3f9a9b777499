"""The two reference quantizers, each run as its own process by the benchmark tool.

    python -m benchmarks.real_models.baselines tflite_int8 SRC calib.npy OUT.tflite
    python -m benchmarks.real_models.baselines litert_quantizer FLOAT.tflite calib.npy OUT.tflite

``tflite_int8``: TFLite's own full-integer converter with the samples as its
representative dataset. From a SavedModel it is ``TFLiteConverter`` itself;
from a .tflite (MediaPipe ships no SavedModel) it is the same calibrator and
MLIR quantizer started from the flatbuffer (``eq_tflite.tflite_quantizer.calibrated``),
float32 I/O in both cases.

``litert_quantizer``: Google's LiteRT Quantizer (``ai-edge-quantizer``; its
successor ``litert-quantizer`` is used if that is what is installed), recipe
``static_wi8_ai8``, calibrated on the same samples.

A float .tflite source is first expanded by eq-tflite's as-shipped stage
(``eq_tflite.io.normalize``: float16 and sparse weights, old op codes, the
custom-op lowering). Neither reference tool reads the MediaPipe files as
shipped (TF's calibrator fails on float16 weights and on the custom op; the
LiteRT Quantizer fails or writes files LiteRT refuses), so the comparison is
on the expanded file; on a plain float file the stage changes nothing.

Exit code 0 and the .tflite written, or 2 and one ``error:`` line.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _expanded(src: str) -> bytes:
    """The float .tflite ``src`` after eq-tflite's as-shipped stage (see the module doc)."""
    from eq_tflite.io.normalize import normalize_float_tflite
    return normalize_float_tflite(Path(src).read_bytes(), src)[0]


def tflite_int8(src: str, calib, out: Path) -> None:
    if Path(src).is_dir():
        import tensorflow as tf
        conv = tf.lite.TFLiteConverter.from_saved_model(src)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        out.write_bytes(conv.convert())
        return
    from eq_tflite.graph import Graph
    from eq_tflite.tflite_quantizer import calibrated
    model = _expanded(src)
    graph = Graph.from_tflite(model)
    name = graph.tensors[graph.inputs[0]].name
    out.write_bytes(calibrated(model, {name: calib}, [name]).to_bytes())


def _aeq():
    try:
        from ai_edge_quantizer import quantizer, recipe
        return quantizer, recipe
    except ImportError:
        pass
    try:
        from litert_quantizer import quantizer, recipe  # type: ignore
        return quantizer, recipe
    except ImportError:
        raise ImportError("Google's LiteRT Quantizer is not installed: pip install ai-edge-quantizer") from None


def with_signature(model: bytes) -> bytes:
    """``model`` with a ``serving_default`` signature over its inputs and outputs, if it has none.

    The LiteRT Quantizer feeds calibration data by signature; MediaPipe's
    models have none. The signature only names existing tensors: it changes
    no computation.
    """
    from eq_tflite.io import codec as fb
    from eq_tflite.io.codec import schema
    m = fb.parse_model(model)
    if m.signatureDefs:
        return model
    sg = m.subgraphs[0]

    def entry(i: int):
        t = schema.TensorMapT()
        t.name, t.tensorIndex = fb.tensor_name(sg.tensors[i]), int(i)
        return t
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    sig.inputs, sig.outputs = [entry(i) for i in sg.inputs], [entry(i) for i in sg.outputs]
    m.signatureDefs = [sig]
    return fb.serialize_model(m)


def litert_quantizer(src: str, calib, out: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    quantizer, recipe = _aeq()
    model = with_signature(_expanded(src))
    signatures = Interpreter(model_content=model).get_signature_list()
    key = next(iter(signatures))
    (name,) = signatures[key]["inputs"]
    qt = quantizer.Quantizer(bytearray(model), recipe.static_wi8_ai8())
    result = qt.calibrate({key: [{name: calib[i:i + 1]} for i in range(len(calib))]})
    if out.exists():
        out.unlink()
    qt.quantize(result).export_model(str(out))


def main(argv: list[str]) -> int:
    import numpy as np

    from eq_tflite.cli import fail
    if len(argv) != 5 or argv[1] not in ("tflite_int8", "litert_quantizer"):
        return fail("usage: python -m benchmarks.real_models.baselines "
                    "{tflite_int8|litert_quantizer} SRC calib.npy OUT.tflite")
    _, which, src, calib_path, out = argv
    try:
        calib = np.load(calib_path).astype(np.float32)
        (tflite_int8 if which == "tflite_int8" else litert_quantizer)(src, calib, Path(out))
    except Exception as err:  # noqa: BLE001 - any failure is one line for the benchmark table
        from eq_tflite.errors import first_line
        return fail(f"{type(err).__name__}: {first_line(err)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
