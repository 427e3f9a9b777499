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

from eq_tflite import grid, runtime
from eq_tflite.errors import EqTfliteError
from eq_tflite.grid import BitWidths
from eq_tflite.io import codec as fb
from eq_tflite.io.calibration import load_data_for
from eq_tflite.io.file_safety import read_file
from eq_tflite.io.model import TfliteLike, TfliteModel
from eq_tflite.metrics import mean_cosine
from eq_tflite.quant_spec import FIXED_OUTPUT_OPS, WEIGHTED, tied_tensors
from eq_tflite.resolve import Resolved
from eq_tflite.rewrite.rewriter import (RewriteLog, read_metadata, recorded_widths,
                                        unpack_int4_weights)

#: Samples used for the run check when the caller gives none.
SMOKE_SAMPLES = 4
#: A strict b-bit model should keep at most this share of all held-back activation
#: values, and of any one tensor's, outside the b-bit levels (else verify warns).
LEVELS_LIMIT_ALL, LEVELS_LIMIT_TENSOR = 0.002, 0.03


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`. ``ok`` is False when any invariant fails."""

    bits: BitWidths
    op_counts: dict[str, int] = field(default_factory=dict)
    quantized_ops: int = 0
    float_ops: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cosine: float | None = None
    agreement: float | None = None
    samples: int = 0
    levels: "LevelsReport | None" = None
    int4_tensors: int = 0  # packed INT4 weights, checked against their int8-container twin
    #: mixed precision: int8 tensor index -> width, where it differs from ``bits``
    weight_widths: dict[int, int] = field(default_factory=dict)
    activation_widths: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"verify: {'OK' if self.ok else 'FAILED'}; {self.quantized_ops} int8 ops "
                 f"({self.bits.label})"]
        if self.weight_widths or self.activation_widths:  # a mixed model, as its metadata records
            counts = Counter([f"W{b}" for b in self.weight_widths.values()]
                             + [f"A{b}" for b in self.activation_widths.values()])
            lines.append("  per-tensor widths checked: " + ", ".join(
                f"{k} on {n} tensors" for k, n in sorted(counts.items(), reverse=True)))
        if self.float_ops:
            lines.append(f"  float ops kept: {', '.join(sorted(set(self.float_ops)))}")
        if self.cosine is not None:
            lines.append(f"  vs float on {self.samples} samples: output cosine {self.cosine:.5f}, "
                         f"top-1 agreement {100 * self.agreement:.2f}%")
        if self.levels is not None:
            lines.append(f"  {self.levels.summary()}")
        if self.int4_tensors:
            lines.append(f"  {self.int4_tensors} INT4 weight tensors: outputs "
                         + ("identical to the int8 container" if self.ok else "checked"))
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  error: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  ... {len(self.errors) - 20} more errors")
        return "\n".join(lines)


def verify(model: TfliteLike, *, float_model: bytes | None = None,
           samples: Mapping[str, np.ndarray] | None = None, bits: BitWidths | None = None,
           builtin_kernels: bool = True, written: RewriteLog | None = None,
           run_inputs: Mapping[str, np.ndarray] | None = None) -> VerifyReport:
    """Checks ``model``; bits default to the model's eq_tflite metadata (else 8/8).

    ``model``: the file's bytes (parsed and checked here, once), or a
    :class:`TfliteModel` its caller parsed from them (not parsed again).
    With ``samples`` it also measures the share of activations outside the
    b-bit levels; with ``written`` (the rewriter's log) it checks that the file
    holds exactly the resolved numbers. Without samples, the run check feeds
    ``run_inputs`` (data-free conversions pass constant inputs from the input
    range) or, if None, a few seeded random inputs.
    """
    handle = TfliteModel.of(model)
    model, model_bytes = handle.model, handle.to_bytes()
    if bits is None:
        bits = bits_of(handle)
    report = VerifyReport(bits)
    # A mixed model records each tensor's own width; every range is checked against it.
    report.weight_widths, report.activation_widths = recorded_widths(handle)
    _check_invariants(model, report)
    if written is not None and written.resolved is not None:
        report.errors += check_numbers(model, written.resolved, written.mapping)
    beyond = kernel_limit_errors(model)
    if beyond:  # LiteRT would abort on these: never hand it the file
        report.errors += beyond
        return report
    try:
        interp = runtime.make_interpreter(model_bytes, builtin_kernels=builtin_kernels)
        named = dict(samples) if samples is not None else \
            dict(run_inputs) if run_inputs is not None else _random_inputs(interp)
        data = match_inputs(interp, named, "the model")
        outs = runtime.run_model(interp, data)
    except (RuntimeError, ValueError) as err:
        report.errors.append(f"LiteRT cannot run the model: {str(err).splitlines()[0]}")
        return report
    if not all(np.all(np.isfinite(o)) for o in outs):
        report.errors.append("the model produced NaN/Inf outputs")
    twin, report.int4_tensors = unpack_int4_weights(handle)
    if report.int4_tensors:  # packed INT4 weights must run exactly as their int8 container
        report.errors += same_outputs(model_bytes, twin, data)
    if float_model is not None:
        float_interp = runtime.make_interpreter(float_model)
        ref = runtime.run_model(float_interp, match_inputs(float_interp, named, "the float model"))
        report.cosine, report.agreement = compare_outputs(ref, outs)
        report.samples = int(ref[0].shape[0])
    if samples is not None:
        report.levels = activation_levels(handle, data, bits.activations,
                                          widths=report.activation_widths)
        name, worst = report.levels.worst()
        if bits.strict and (report.levels.share > LEVELS_LIMIT_ALL or worst > LEVELS_LIMIT_TENSOR):
            report.warnings.append(
                f"{100 * report.levels.share:.2f}% of the activations (worst tensor {name}: "
                f"{100 * worst:.1f}%) lie outside the {report.levels.label} levels; stock kernels "
                "keep them in the int8 headroom. Calibrate with data like this.")
    return report


#: TFLite's int8 ADD/SUB kernels shift inputs left by 20 bits and require the output
#: multiplier 2 * max(s_in) / (2^20 * s_out) below 1 (a CHECK that aborts the process).
_ADD_LEFT_SHIFT = 20


def kernel_limit_errors(model: Any) -> list[str]:
    """Scales TFLite's int8 kernels cannot requantize (LiteRT aborts preparing them).

    ADD and SUB need an output scale of at least 2^-19 times their larger input
    scale. Real models stay far from that; a float model with extreme values
    (weights around 1e28 in one channel, whose huge range a following ReLU cuts
    off again) can cross it, and then the numbers are refused here, in one line,
    instead of crashing the runtime.
    """
    sg = model.subgraphs[0]
    errors = []
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in ("ADD", "SUB") or len(op.inputs) < 2 or not op.outputs:
            continue
        tensors = [sg.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]) if i >= 0]
        if len(tensors) != 3 or not all(fb.type_name(t.type) == "INT8" and t.quantization is not None
                                        and t.quantization.scale is not None
                                        and len(t.quantization.scale) for t in tensors):
            continue
        s1, s2, s_out = (float(t.quantization.scale[0]) for t in tensors)
        if not (s_out > 0 and np.isfinite([s1, s2, s_out]).all()):
            continue  # reported by the invariants
        if 2 * max(s1, s2) >= 2.0 ** _ADD_LEFT_SHIFT * s_out:
            errors.append(f"{kind} {fb.tensor_name(tensors[2])}: output scale {s_out:.3g} is below "
                          f"2^-19 of its input scale {max(s1, s2):.3g}, which TFLite's int8 {kind} "
                          "kernel cannot requantize (LiteRT would abort); the float model has "
                          "extreme values there (check its weights)")
    return errors


def match_inputs(interp: Any, samples: Mapping[str, np.ndarray], what: str) -> list[np.ndarray]:
    """``samples`` in the input order of ``interp``: by tensor name, else by position.

    The same model converted from another format (a .keras file, its SavedModel
    export) can name its inputs differently (``input_layer`` / ``keras_tensor``);
    the samples then follow the other model's input order.
    """
    names = [d["name"] for d in interp.get_input_details()]
    if all(n in samples for n in names):
        return [samples[n] for n in names]
    if len(samples) == len(names):
        return list(samples.values())
    raise EqTfliteError(f"{what} has {len(names)} inputs ({', '.join(names)}), but the samples "
                        f"have {len(samples)} ({', '.join(samples)})")


def bits_of(model: TfliteLike) -> BitWidths:
    """Bit widths recorded in a model's eq_tflite metadata (8/8 for other models)."""
    meta = read_metadata(model) or {}
    return BitWidths(meta.get("weight_bits", 8), meta.get("activation_bits", 8),
                     meta.get("activation_range", "strict"))


def check_numbers(model: Any, resolved: Resolved, mapping: Mapping[int, str]) -> list[str]:
    """Differences between the file and the resolved numbers (empty: the file holds them)."""
    sg = model.subgraphs[0]
    errors = []
    for i, name in mapping.items():
        t = sg.tensors[i]
        if name in resolved.activations and fb.type_name(t.type) == "INT8" \
                and fb.buffer_array(model, t) is None:
            q, want = t.quantization, resolved.activations[name]
            if q is None or q.scale is None or (float(q.scale[0]), int(q.zeroPoint[0])) != want:
                errors.append(f"{name}: activation params differ from the resolved {want}")
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind not in WEIGHTED:
            continue
        _, w_pos, b_pos, _ = WEIGHTED[kind]
        layer = resolved.layers.get(mapping.get(op.inputs[w_pos], ""))
        if layer is None:
            continue
        pairs = [(op.inputs[w_pos], layer.values, layer.file_scales)]
        if b_pos < len(op.inputs) and op.inputs[b_pos] >= 0 and layer.bias_values is not None:
            pairs.append((op.inputs[b_pos], layer.bias_values, layer.file_bias_scales))
        for i, values, scales in pairs:
            t = sg.tensors[i]
            if not np.array_equal(fb.buffer_array(model, t), values) or \
                    not np.array_equal(np.asarray(t.quantization.scale, np.float32), scales):
                errors.append(f"{fb.tensor_name(t)}: differs from the resolved numbers of {layer.weight}")
    return errors


@dataclass
class LevelsReport:
    """Integer activation values outside the b-bit levels, measured on real data.

    Counts every int8 activation tensor (model input included) except outputs
    of fixed-scale ops (softmax, logistic, tanh) and the tensors tied to them
    (``fixed_range_tensors``), whose spec parameters span the int8 container
    at any width.
    """

    bits: int
    total: int = 0
    outside: int = 0
    per_tensor: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (outside, total)
    mixed: dict[int, int] = field(default_factory=dict)  # bits -> tensors at another width

    @property
    def label(self) -> str:
        """``7-bit``, or ``7-bit (8-bit on 3 tensors)`` when tensors have their own widths."""
        other = ", ".join(f"{b}-bit on {n} tensors" for b, n in sorted(self.mixed.items(), reverse=True))
        return f"{self.bits}-bit" + (f" ({other})" if other else "")

    @property
    def share(self) -> float:
        return self.outside / self.total if self.total else 0.0

    def worst(self) -> tuple[str, float]:
        """(tensor name, share outside) of the tensor with the largest share."""
        if not self.per_tensor:
            return "", 0.0
        name = max(self.per_tensor, key=lambda n: self.per_tensor[n][0] / max(self.per_tensor[n][1], 1))
        out, tot = self.per_tensor[name]
        return name, out / max(tot, 1)

    def summary(self) -> str:
        name, worst = self.worst()
        return (f"activations outside the {self.label} levels: {100 * self.share:.3f}% of "
                f"{self.total} values; worst tensor {name} {100 * worst:.2f}%")


def activation_levels(model: TfliteLike, samples: Mapping[str, np.ndarray] | list[np.ndarray],
                      bits: int, batch_size: int = 8,
                      widths: Mapping[int, int] | None = None) -> LevelsReport:
    """Runs ``model`` on ``samples`` and counts int8 activations outside the b-bit levels.

    ``widths``: int8 tensor index -> its own width (mixed precision; others ``bits``).
    The interpreter keeps every tensor of a batch, so ``batch_size`` bounds the
    memory: on EfficientNet-Lite1 (240x240, 64 samples) batches of 8 peaked at
    363 MiB and took 42 s where batches of 100 (all 64 at once) peaked at 1738 MiB
    and took 77 s (same counts; one process each, on a loaded 2-core machine).
    """
    widths = widths or {}
    handle = TfliteModel.of(model)
    model, model_bytes = handle.model, handle.to_bytes()
    sg = model.subgraphs[0]
    fixed = fixed_range_tensors(model)
    watched = {i: fb.tensor_name(t) for i, t in enumerate(sg.tensors)
               if i not in fixed and fb.is_int8_activation(model, t)}
    report = LevelsReport(bits)
    for i in watched:
        if widths.get(i, bits) != bits:
            report.mixed[widths[i]] = report.mixed.get(widths[i], 0) + 1
    arrays = [samples[fb.tensor_name(sg.tensors[i])] for i in sg.inputs] \
        if isinstance(samples, Mapping) else list(samples)
    counts = {i: [0, 0] for i in watched}
    for values in runtime.iterate_tensors(model_bytes, arrays, list(watched), batch_size):
        for i, q in values.items():
            counts[i][0] += grid.outside_levels(q, widths.get(i, bits))
            counts[i][1] += q.size
    for i, (out, tot) in counts.items():
        report.per_tensor[watched[i]] = (out, tot)
        report.outside += out
        report.total += tot
    return report


def same_outputs(model_bytes: bytes, reference: bytes,
                 samples: Mapping[str, np.ndarray] | list[np.ndarray],
                 what: str = "the packed INT4 model") -> list[str]:
    """Errors unless both models give identical outputs on ``samples`` (builtin kernels)."""
    try:
        got = runtime.run_model(runtime.make_interpreter(model_bytes), samples)
    except (RuntimeError, ValueError) as err:
        return [f"LiteRT cannot run {what}: {str(err).splitlines()[0]}"]
    want = runtime.run_model(runtime.make_interpreter(reference), samples)
    if len(got) != len(want) or not all(np.array_equal(a, b) for a, b in zip(got, want)):
        return [f"{what} gives other outputs than its int8-container form"]
    return []


def compare_outputs(ref: list[np.ndarray], out: list[np.ndarray]) -> tuple[float, float]:
    """(mean per-sample cosine of the first output, top-1 agreement of the first output)."""
    a = ref[0].reshape(ref[0].shape[0], -1).astype(np.float64)
    b = out[0].reshape(out[0].shape[0], -1).astype(np.float64)
    return mean_cosine(a, b), float(np.mean(a.argmax(1) == b.argmax(1)))


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


def fixed_range_tensors(model: Any) -> set[int]:
    """Outputs of fixed-range ops (softmax, logistic, tanh) and the tensors tied to them that
    carry the same parameters: the spec fixes these to 8-bit levels at any width."""
    sg = model.subgraphs[0]
    parent: dict[int, int] = {}

    def find(t: int) -> int:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    fixed = {}
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind in FIXED_OUTPUT_OPS:
            fixed.update({int(o): kind for o in op.outputs})
        members = tied_tensors(kind, list(op.inputs), list(op.outputs))
        for t in members[1:]:
            parent[find(t)] = find(members[0])

    def params(t: int) -> tuple[float, int] | None:
        q = sg.tensors[t].quantization
        return None if q is None or q.scale is None or not len(q.scale) else \
            (float(q.scale[0]), int(q.zeroPoint[0]))

    roots = {find(t): params(t) for t in fixed}
    return set(fixed) | {t for t in parent if find(t) in roots and params(t) == roots[find(t)]}


def _check_invariants(model: Any, report: VerifyReport) -> None:
    sg = model.subgraphs[0]
    fixed = fixed_range_tensors(model)
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
            w_bits = report.weight_widths.get(int(op.inputs[WEIGHTED[kind][1]]), report.bits.weights)
            _check_weighted(model, sg, op, kind, w_bits, report)
        _check_tied(sg, op, kind, report)
        for out in op.outputs:
            if out not in fixed:
                _check_activation(model, sg.tensors[out], report,
                                  report.activation_widths.get(int(out), report.bits.activations))
    report.op_counts = dict(counts)


def _check_activation(model: Any, t: Any, report: VerifyReport, bits: int) -> None:
    """Scale valid and zero point on the tensor's own ``bits``-bit levels."""
    if fb.type_name(t.type) != "INT8" or t.quantization is None or t.quantization.scale is None:
        return
    scale, zp = float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if not (np.isfinite(scale) and scale > 0):
        report.errors.append(f"{fb.tensor_name(t)}: invalid scale {scale}")
    if not qmin <= zp <= qmax:
        report.errors.append(f"{fb.tensor_name(t)}: zero point {zp} outside the "
                             f"{bits}-bit range [{qmin}, {qmax}]")


def _check_weighted(model: Any, sg: Any, op: Any, kind: str, bits: int, report: VerifyReport) -> None:
    """Weights within the layer's own ``bits``-bit range, zero points 0, bias scales s_in * s_w."""
    qmax = 2 ** (bits - 1) - 1
    data_pos, w_pos, b_pos, axis = WEIGHTED[kind]
    w_t = sg.tensors[op.inputs[w_pos]]
    w = fb.buffer_array(model, w_t)
    if w is None or fb.type_name(w_t.type) not in ("INT8", "INT4"):
        return
    name = fb.tensor_name(w_t)
    q = w_t.quantization
    if any(int(z) != 0 for z in q.zeroPoint):
        report.errors.append(f"{name}: weight zero points must be 0")
    peak = int(np.abs(w.astype(np.int32)).max(initial=0))
    if peak > qmax:
        report.errors.append(f"{name}: |weight| reaches {peak} > {qmax} ({bits}-bit)")
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


USAGE = "usage: python -m eq_tflite.verify MODEL.tflite [--float_model SRC] [--data x.npy]"


def main(argv: list[str], float_model: str | None = None, data: str | None = None) -> int:
    """CLI body: prints the report; exit code 0 ok, 1 invariants violated, 2 bad input."""
    from eq_tflite.cli import guarded
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    return guarded(lambda: _verify_file(argv[1], float_model, data))


def _verify_file(path: str, float_model: str | None, data: str | None) -> int:
    from eq_tflite.isolation import run_isolated
    model = TfliteModel(read_file(path, "model"), path)  # checked before native code sees it
    _check_metadata(model, path)
    float_bytes, samples = load_data_for(float_model, data, model)
    # LiteRT trusts much of the model: a crash in the child is an error line, not a dead CLI.
    report = run_isolated(verify, model, float_model=float_bytes, samples=samples,
                          what="verification (LiteRT)")
    print(report.summary())
    return 0 if report.ok else 1


def _check_metadata(model: TfliteModel, path: str) -> None:
    """The eq_tflite metadata that :func:`verify` reads the bit widths from, if any, is sound."""
    try:
        meta = read_metadata(model)
        if meta is not None:
            BitWidths(meta.get("weight_bits", 8), meta.get("activation_bits", 8))  # as verify() reads them
            for widths in recorded_widths(model):  # a mixed model's per-tensor widths
                if any(not 2 <= b <= 8 for b in widths.values()):
                    raise ValueError("per-tensor bit width out of 2..8")
    except (ValueError, TypeError, AttributeError, IndexError) as err:  # JSON, types, ranges
        raise EqTfliteError(f"{path}: its eq_tflite metadata is corrupt ({type(err).__name__})") from None


def run() -> None:
    """CLI entry point."""
    from absl import flags

    from eq_tflite.cli import run_absl
    from eq_tflite.quiet import set_verbose
    set_verbose(False)
    flags.DEFINE_string("float_model", None, "Float model (SavedModel/Keras/.tflite) for the cosine report.")
    flags.DEFINE_string("data", None, "Real samples (.npy/.npz) to run: reports the share of "
                        "activations outside the b-bit levels; default: random inputs.")
    run_absl(lambda argv: main(argv, flags.FLAGS.float_model, flags.FLAGS.data), USAGE)


if __name__ == "__main__":
    run()
