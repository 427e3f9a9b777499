"""Bit-Split benchmark: low-bit weights (W4A8, W3A8, W2A8) against min/max and EasyQuant.

    python tools/benchmark_bitsplit.py

For each example model and weight width it converts with each method and
measures, on the Fashion-MNIST test split (10k images, TFLite's builtin
kernels): top-1 accuracy, top-1 agreement and mean output cosine against the
float model, the share of activations outside the b-bit levels, the method
stage's seconds, and the file size as an int8 container and, for widths <= 4,
with packed INT4 weights (``--pack_int4``). It then times Bit-Split against
EasyQuant on the same model and calibration samples, alternating in one
process (medians), and optionally runs the choice studies (``--studies``):
activation ranges (iterative MSE / EasyQuant / min/max), rows per layer and
calibration samples. Results go to the ``bitsplit`` section of BENCHMARKS.md
(``tools/bench_doc.py``) and benchmarks/bitsplit.json.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet_fmnist", "mobilenetv2_fmnist"], "Example models under examples/.")
flags.DEFINE_list("methods", ["minmax", "easyquant", "bitsplit"], "Methods to compare.")
flags.DEFINE_list("weight_bits", ["4", "3", "2"], "Weight widths.")
flags.DEFINE_integer("activation_bits", 8, "Activation width.")
flags.DEFINE_string("calibration_data", str(REPO / "examples" / "fmnist_calib.npy"), "Calibration .npy.")
flags.DEFINE_integer("limit", None, "Evaluate on the first N test images only (default: all 10k).")
flags.DEFINE_integer("timing_runs", 3, "Runs per method for the Bit-Split / EasyQuant time ratio.")
flags.DEFINE_bool("studies", True, "Also run the Bit-Split choice studies at W4A8.")
flags.DEFINE_integer("study_activation_bits", 6,
                     "Also compare Bit-Split's activation choices at W4A<this> (0: skip).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'bitsplit' section is rewritten.")


def _machine() -> str:
    from bench_doc import machine
    return machine()


class Bench:
    """Test data, float references and conversions of one model."""

    def __init__(self, model: str):
        import numpy as np

        from eq_tflite import api
        from eq_tflite.datasets import load_fashion_mnist
        from eq_tflite.evaluation import predict
        self.x, self.y = load_fashion_mnist("test")
        if FLAGS.limit:
            self.x, self.y = self.x[:FLAGS.limit], self.y[:FLAGS.limit]
        self.calib = np.load(FLAGS.calibration_data)
        self.float_model = api.float_model_of(str(REPO / "examples" / model))
        self.reference = predict(self.float_model, self.x)

    def row(self, method: str, wbits: int, options: dict | None = None,
            samples: int | None = None, abits: int | None = None) -> dict:
        """Converts and scores one cell (activation width: ``--activation_bits`` unless given)."""
        abits = abits or FLAGS.activation_bits
        from eq_tflite import api
        from eq_tflite.evaluation import predict, score
        from eq_tflite.verify import activation_levels
        conv = api.convert_model(self.float_model, self.calib, weight_bits=wbits,
                                 activation_bits=abits, method=method,
                                 method_options=options or {}, num_calibration_samples=samples,
                                 pack_int4=wbits <= 4)
        container = api.apply_plan(conv.tflite_int8, api.Graph.from_tflite(self.float_model),
                                   conv.plan, self.float_model)[0].to_bytes()
        s = score(predict(conv.model, self.x), self.reference, self.y)
        levels = activation_levels(conv.model, [self.x], abits)
        return {"method": method, "weight_bits": wbits, "activation_bits": abits,
                "samples": conv.num_calibration,
                "accuracy": s.accuracy, "agreement": s.agreement, "cosine": s.cosine,
                "outside": levels.share, "worst_outside": levels.worst()[1],
                "seconds": conv.timings["method"], "container_bytes": len(container),
                "packed_bytes": len(conv.model) if wbits <= 4 else None,
                "verify_ok": conv.report.ok, "tflite_int8_bytes": len(conv.tflite_int8)}

    def float_row(self) -> dict:
        from eq_tflite.evaluation import score
        s = score(self.reference, self.reference, self.y)
        return {"accuracy": s.accuracy, "bytes": len(self.float_model)}


def _timing(bench: Bench, runs: int, wbits: int = 4) -> dict[str, float]:
    """Median method-stage seconds, alternating in one process on the same data.

    ``easyquant`` and ``bitsplit`` use the same samples (Bit-Split's default
    count); ``easyquant_default`` is EasyQuant with its own default (50).
    """
    from eq_tflite import api, methods
    from eq_tflite.graph import Graph
    from eq_tflite.grid import BitWidths
    from eq_tflite.plan import MethodContext
    graph = Graph.from_tflite(bench.float_model)
    name = graph.tensors[graph.inputs[0]].name
    n_bs, n_eq = api.DEFAULT_SAMPLES["bitsplit"], api.DEFAULT_SAMPLES["easyquant"]
    bits = BitWidths(wbits, FLAGS.activation_bits)
    cells = {"easyquant": ("easyquant", n_bs), "bitsplit": ("bitsplit", n_bs),
             "easyquant_default": ("easyquant", n_eq)}
    times: dict[str, list[float]] = {k: [] for k in cells}
    for _ in range(runs):
        for key, (method, n) in cells.items():
            ctx = MethodContext(graph, bench.float_model, {name: bench.calib[:n]}, bits,
                                {"seed": 0}, progress=False)
            t0 = time.perf_counter()
            methods.get(method)(ctx)
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _fmt_row(label: str, r: dict) -> str:
    packed = "-" if r["packed_bytes"] is None else f"{r['packed_bytes'] / 1024:.1f}"
    return (f"| {label} | W{r['weight_bits']}A{r['activation_bits']} | {r['samples']} | "
            f"{100 * r['accuracy']:.2f} | {100 * r['agreement']:.2f} | {r['cosine']:.5f} | "
            f"{100 * r['outside']:.3f} ({100 * r['worst_outside']:.2f}) | {r['seconds']:.2f} | "
            f"{r['container_bytes'] / 1024:.1f} | {packed} |")


_HEADER = ["| method | W/A | N | top-1 % | agreement % | cosine | outside % (worst %) | seconds | "
           "int8 file KiB | INT4-packed KiB |", "|---|---|---|---|---|---|---|---|---|---|"]

#: (label, options, calibration samples) of the choice studies at W4A8.
_STUDIES = [
    ("activations: iterative MSE (default)", {"bs_activations": "mse"}, None),
    ("activations: EasyQuant's search", {"bs_activations": "easyquant"}, None),
    ("activations: min/max", {"bs_activations": "minmax"}, None),
    ("rows per layer: 1,024", {"bs_max_rows": 1024}, None),
    ("rows per layer: 16,384 (paper ~15k)", {"bs_max_rows": 16384}, None),
    ("bias correction off (the paper's form)", {"bs_bias_correction": False}, None),
    ("coordinate-descent rounds: 0 (best clipped rounding only)", {"bs_rounds": 0}, None),
    ("coordinate-descent rounds: 8", {"bs_rounds": 8}, None),
    ("calibration samples: 50", {}, 50),
]


def main(argv: list[str]) -> None:
    del argv
    from bench_doc import update_section

    from eq_tflite import api
    from eq_tflite.io.atomic import write_atomic
    cmd = " ".join(["python tools/benchmark_bitsplit.py", *sys.argv[1:]])
    data = "Fashion-MNIST test split" + (f" (first {FLAGS.limit})" if FLAGS.limit else " (10,000 images)")
    lines = ["## Bit-Split: low-bit weights", "", f"Command: `{cmd}`", "", f"Machine: {_machine()}", "",
             f"{data}; calibration `{Path(FLAGS.calibration_data).name}`, each method's default "
             "sample count (N). TFLite's builtin kernels; agreement and cosine against the float "
             "model. Outside: share of int8 activation values outside the b-bit levels (worst "
             "tensor). Seconds: the method stage. File sizes: the int8-container model and, for "
             "weights of at most 4 bits, the same model with packed INT4 weights (`--pack_int4`; "
             "verify found identical outputs in every row).", ""]
    results: dict = {}
    for model in FLAGS.models:
        bench = Bench(model)
        fl = bench.float_row()
        results[f"{model}/float"] = fl
        lines += [f"### {model}", "", "", "", *_HEADER]
        head = len(lines) - 4
        for wb in FLAGS.weight_bits:
            for method in FLAGS.methods:
                r = bench.row(method, int(wb))
                results[f"{model}/{method}/W{wb}"] = r
                lines.append(_fmt_row(method, r))
                print(lines[-1], flush=True)
                fl["tflite_int8_bytes"] = r["tflite_int8_bytes"]
        lines[head] = (f"Float: top-1 {100 * fl['accuracy']:.2f}%, {fl['bytes'] / 1024:.1f} KiB; "
                       f"TFLite's own int8 model {fl['tflite_int8_bytes'] / 1024:.1f} KiB.")
        lines.append("")
        if FLAGS.studies:
            lines += [f"Bit-Split choices at W4A8 ({model}; defaults: iterative-MSE activations, "
                      f"4,096 rows, 3 rounds, bias correction, N={api.DEFAULT_SAMPLES['bitsplit']}):", "", *_HEADER]
            for label, options, samples in _STUDIES:
                r = bench.row("bitsplit", 4, options, samples)
                results[f"{model}/study/{label}"] = r
                lines.append(_fmt_row(label, r))
                print(lines[-1], flush=True)
            lines.append("")
        if FLAGS.studies and FLAGS.study_activation_bits:
            ab = FLAGS.study_activation_bits
            lines += [f"Activation choices at W4A{ab} ({model}), with EasyQuant alone for reference:",
                      "", *_HEADER]
            for label, method, options in [("easyquant", "easyquant", {}),
                                           *[(lbl, "bitsplit", o) for lbl, o, _ in _STUDIES[:3]]]:
                r = bench.row(method, 4, options, abits=ab)
                results[f"{model}/study_a{ab}/{label}"] = r
                lines.append(_fmt_row(label, r))
                print(lines[-1], flush=True)
            lines.append("")
        t = _timing(bench, FLAGS.timing_runs)
        t["ratio"] = t["bitsplit"] / t["easyquant"]
        t["ratio_default"] = t["bitsplit"] / t["easyquant_default"]
        results[f"{model}/timing"] = t
        n_bs, n_eq = api.DEFAULT_SAMPLES["bitsplit"], api.DEFAULT_SAMPLES["easyquant"]
        lines += [f"Calibration time, {model}, W4A{FLAGS.activation_bits} (method stage, alternating "
                  f"in one process, median of {FLAGS.timing_runs}): Bit-Split {t['bitsplit']:.2f} s "
                  f"and EasyQuant {t['easyquant']:.2f} s on the same {n_bs} samples, ratio "
                  f"**{t['ratio']:.2f}x**; against EasyQuant with its default {n_eq} samples "
                  f"({t['easyquant_default']:.2f} s) {t['ratio_default']:.2f}x.", ""]
        print(lines[-2], flush=True)
    update_section(FLAGS.output, "bitsplit", "\n".join(lines))
    write_atomic(REPO / "benchmarks" / "bitsplit.json", json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    app.run(main)
