"""Stage 6 (verify): reloads a written model and checks it.

Checks the spec invariants (b-bit weight ranges, zero points, bias scales,
tied scales), that LiteRT runs it, and, given the float model and samples, the
output cosine and top-1 agreement against float.

CLI: ``python -m eq_tflite.verify MODEL.tflite [--float_model F] [--data x.npy]``.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from eq_tflite import runtime
from eq_tflite.errors import EqTfliteError
from eq_tflite.grid import BitWidths
from eq_tflite.io import flatbuffer as fb
from eq_tflite.rewrite.op_rules import FIXED_OUTPUT_OPS, WEIGHTED, tied_tensors
from eq_tflite.rewrite.rewriter import read_metadata

#: Samples used for the run check when the caller gives none.
SMOKE_SAMPLES = 4


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`. ``ok`` is False when any invariant fails."""

    bits: BitWidths
    op_counts: dict[str, int] = field(default_factory=dict)
    quantized_ops: int = 0
    float_ops: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cosine: float | None = None
    agreement: float | None = None
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"verify: {'OK' if self.ok else 'FAILED'}; {self.quantized_ops} int8 ops "
                 f"(W{self.bits.weights}/A{self.bits.activations})"]
        if self.float_ops:
            lines.append(f"  float ops kept: {', '.join(sorted(set(self.float_ops)))}")
        if self.cosine is not None:
            lines.append(f"  vs float on {self.samples} samples: output cosine {self.cosine:.5f}, "
                         f"top-1 agreement {100 * self.agreement:.2f}%")
        lines += [f"  error: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  ... {len(self.errors) - 20} more errors")
        return "\n".join(lines)


def verify(model_bytes: bytes, *, float_model: bytes | None = None,
           samples: Mapping[str, np.ndarray] | None = None, bits: BitWidths | None = None,
           builtin_kernels: bool = True) -> VerifyReport:
    """Checks ``model_bytes``; bits default to the model's eq_tflite metadata (else 8/8)."""
    model = fb.parse_model(model_bytes)
    if bits is None:
        meta = read_metadata(model_bytes) or {}
        bits = BitWidths(meta.get("weight_bits", 8), meta.get("activation_bits", 8))
    report = VerifyReport(bits)
    _check_invariants(model, report)
    try:
        interp = runtime.make_interpreter(model_bytes, builtin_kernels=builtin_kernels)
        data = dict(samples) if samples is not None else _random_inputs(interp)
        outs = runtime.run_model(interp, data)
    except (RuntimeError, ValueError) as err:
        report.errors.append(f"LiteRT cannot run the model: {str(err).splitlines()[0]}")
        return report
    if not all(np.all(np.isfinite(o)) for o in outs):
        report.errors.append("the model produced NaN/Inf outputs")
    if float_model is not None:
        ref = runtime.run_model(runtime.make_interpreter(float_model), data)
        report.cosine, report.agreement = compare_outputs(ref, outs)
        report.samples = int(ref[0].shape[0])
    return report


def compare_outputs(ref: list[np.ndarray], out: list[np.ndarray]) -> tuple[float, float]:
    """(mean per-sample cosine of the first output, top-1 agreement of the first output)."""
    a = ref[0].reshape(ref[0].shape[0], -1).astype(np.float64)
    b = out[0].reshape(out[0].shape[0], -1).astype(np.float64)
    return mean_cosine(a, b), float(np.mean(a.argmax(1) == b.argmax(1)))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of cos(a_i, b_i); rows that are both zero count as 1."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num == 0, 1.0, 0.0))
    return float(np.mean(cos))


def _random_inputs(interp: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for d in interp.get_input_details():
        shape = (SMOKE_SAMPLES, *d["shape"][1:])
        if d["dtype"] == np.float32:
            out[d["name"]] = rng.random(shape, dtype=np.float32)
        else:
            scale, zp = d["quantization"]
            out[d["name"]] = ((rng.integers(-128, 128, shape) - zp) * scale).astype(np.float32)
    return out


def _check_invariants(model: Any, report: VerifyReport) -> None:
    sg = model.subgraphs[0]
    qmax = report.bits.weight_qmax
    counts: Counter = Counter()
    for op in sg.operators:
        kind = fb.op_name(model, op)
        counts[kind] += 1
        tensors = [sg.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
        if kind not in ("QUANTIZE", "DEQUANTIZE"):
            if any(fb.type_name(t.type) == "FLOAT32" and fb.buffer_array(model, t) is None for t in tensors):
                report.float_ops.append(kind)
            elif any(fb.type_name(sg.tensors[i].type) == "INT8" for i in op.outputs):
                report.quantized_ops += 1  # int8 compute (not int32 shape arithmetic)
        if kind in WEIGHTED:
            _check_weighted(model, sg, op, kind, qmax, report)
        _check_tied(sg, op, kind, report)
        if kind not in FIXED_OUTPUT_OPS:
            for out in op.outputs:
                _check_activation(model, sg.tensors[out], report)
    report.op_counts = dict(counts)


def _check_activation(model: Any, t: Any, report: VerifyReport) -> None:
    if fb.type_name(t.type) != "INT8" or t.quantization is None or t.quantization.scale is None:
        return
    scale, zp = float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])
    bits = report.bits
    if not (np.isfinite(scale) and scale > 0):
        report.errors.append(f"{fb.tensor_name(t)}: invalid scale {scale}")
    if not bits.act_qmin <= zp <= bits.act_qmax:
        report.errors.append(f"{fb.tensor_name(t)}: zero point {zp} outside the "
                             f"{bits.activations}-bit range [{bits.act_qmin}, {bits.act_qmax}]")


def _check_weighted(model: Any, sg: Any, op: Any, kind: str, qmax: int, report: VerifyReport) -> None:
    data_pos, w_pos, b_pos, axis = WEIGHTED[kind]
    w_t = sg.tensors[op.inputs[w_pos]]
    w = fb.buffer_array(model, w_t)
    if w is None or fb.type_name(w_t.type) != "INT8":
        return
    name = fb.tensor_name(w_t)
    q = w_t.quantization
    if any(int(z) != 0 for z in q.zeroPoint):
        report.errors.append(f"{name}: weight zero points must be 0")
    peak = int(np.abs(w.astype(np.int32)).max(initial=0))
    if peak > qmax:
        report.errors.append(f"{name}: |weight| reaches {peak} > {qmax} ({report.bits.weights}-bit)")
    s_w = np.asarray(q.scale, np.float64)
    if len(s_w) > 1 and (q.quantizedDimension != axis or len(s_w) != w.shape[axis]):
        report.errors.append(f"{name}: per-channel scales must run along axis {axis}")
    if b_pos < len(op.inputs) and op.inputs[b_pos] >= 0:
        b_t = sg.tensors[op.inputs[b_pos]]
        s_in = np.float64(sg.tensors[op.inputs[data_pos]].quantization.scale[0])
        want = (s_in * s_w).astype(np.float32)
        got = np.asarray(b_t.quantization.scale, np.float32)
        if fb.type_name(b_t.type) != "INT32":
            report.errors.append(f"{fb.tensor_name(b_t)}: bias must be int32")
        elif got.shape != np.broadcast_shapes(got.shape, want.shape) or \
                not np.allclose(got, want, rtol=1e-6, atol=0):
            report.errors.append(f"{fb.tensor_name(b_t)}: bias scale != s_in * s_w")


def _check_tied(sg: Any, op: Any, kind: str, report: VerifyReport) -> None:
    params = set()
    for i in tied_tensors(kind, op.inputs, op.outputs):
        t = sg.tensors[i]
        if fb.type_name(t.type) == "INT8" and t.quantization is not None and t.quantization.scale is not None:
            params.add((float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])))
    if len(params) > 1:
        report.errors.append(f"{kind} {fb.tensor_name(sg.tensors[op.outputs[0]])}: tied tensors "
                             f"have different scales {sorted(params)}")


def main(argv: list[str], float_model: str | None = None, data: str | None = None) -> int:
    """CLI body: prints the report; exit code 0 ok, 1 invariants violated, 2 bad input."""
    from eq_tflite.cli import guarded
    if len(argv) != 2:
        print("usage: python -m eq_tflite.verify MODEL.tflite [--float_model SRC] [--data x.npy]",
              file=sys.stderr)
        return 2
    return guarded(lambda: _verify_file(argv[1], float_model, data))


def _verify_file(path: str, float_model: str | None, data: str | None) -> int:
    from eq_tflite.api import load_data_for
    from eq_tflite.isolation import run_isolated
    model = fb.read_file(path, "model")
    fb.parse_model(model, path)  # structure check before any native code sees the file
    _check_metadata(model, path)
    float_bytes, samples = load_data_for(float_model, data)
    # LiteRT trusts much of the model: a crash in the child is an error line, not a dead CLI.
    report = run_isolated(verify, model, float_model=float_bytes, samples=samples,
                          what="verification (LiteRT)")
    print(report.summary())
    return 0 if report.ok else 1


def _check_metadata(model: bytes, path: str) -> None:
    """The eq_tflite metadata that :func:`verify` reads the bit widths from, if any, is sound."""
    try:
        meta = read_metadata(model)
        if meta is not None:
            BitWidths(meta.get("weight_bits", 8), meta.get("activation_bits", 8))  # as verify() reads them
    except (ValueError, TypeError, AttributeError, IndexError) as err:  # JSON, types, ranges
        raise EqTfliteError(f"{path}: its eq_tflite metadata is corrupt ({type(err).__name__})") from None


def run() -> None:
    """CLI entry point."""
    from absl import flags

    from eq_tflite.cli import run_absl
    from eq_tflite.quiet import set_verbose
    set_verbose(False)
    flags.DEFINE_string("float_model", None, "Float model (SavedModel/Keras/.tflite) for the cosine report.")
    flags.DEFINE_string("data", None, "Samples (.npy/.npz) to run; default: random inputs.")
    run_absl(lambda argv: main(argv, flags.FLAGS.float_model, flags.FLAGS.data))


if __name__ == "__main__":
    run()
