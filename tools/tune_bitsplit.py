"""How Bit-Split's defaults were chosen on the real-model suite (issue 15).

    python tools/tune_bitsplit.py [--models ...] [--variants ...]

Each variant converts a suite model (``benchmarks/real_models``, built by
``python -m benchmarks.real_models.build``) from its float ``.tflite`` with
``--method bitsplit``, W4A8 and the suite's 64 calibration samples, and scores
the result against the float model on the 500 held-out evaluation samples with
the suite's metrics. Results accumulate in ``--results`` (rerun a cell with
``--rerun``); the ``bitsplit_choices`` section of ``--output`` is rewritten
from them.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from absl import app, flags  # noqa: E402

#: name -> (description, method options, convert_model keyword arguments)
VARIANTS = {
    "paper": ("the old defaults: no held-out rows, no ridge (the paper's fit + bias shift)",
              {"bs_holdout": 0.0, "bs_ridge": "0"}, {}),
    "paper_nobias": ("no held-out rows, no ridge, no bias shift",
                     {"bs_holdout": 0.0, "bs_ridge": "0", "bs_bias_correction": False}, {}),
    "default": ("the defaults", {}, {}),
    "holdout_r0": ("held-out rows, ridge 0 only", {"bs_ridge": "0"}, {}),
    "own_target": ("held-out rows, target: the layer's own float weights on quantized inputs",
                   {"bs_target": "own"}, {}),
    "ridge_wide": ("held-out rows, ridge 0,0.1,1,10", {"bs_ridge": "0,0.1,1,10"}, {}),
    "holdout_0.5": ("half the samples held out", {"bs_holdout": 0.5}, {}),
    "holdout_0.125": ("an eighth of the samples held out", {"bs_holdout": 0.125}, {}),
    "nobias": ("defaults without the bias shift", {"bs_bias_correction": False}, {}),
    "rows_1024": ("defaults, 1024 rows per layer", {"bs_max_rows": 1024}, {}),
    "rows_16384": ("defaults, 16384 rows per layer", {"bs_max_rows": 16384}, {}),
    "samples_32": ("defaults, 32 calibration samples", {}, {"num_calibration_samples": 32}),
    "act_easyquant": ("defaults, EasyQuant's activation ranges and weight steps as a candidate",
                      {"bs_activations": "easyquant"}, {}),
    "act_minmax": ("defaults, min/max activation ranges", {"bs_activations": "minmax"}, {}),
}
MODELS = ["efficientnet_lite1", "efficientnet_lite2", "face_detection_short_range", "selfie_segmentation",
          "palm_detection_lite", "hand_landmark_lite"]
METRICS = {"classifier": ("agreement", "top-1 agreement", 1), "detector": ("top10_anchors", "top-10 anchors", 1),
           "segmentation": ("mask_iou", "mask IoU", 1), "landmarks": ("landmark_px", "landmark error px", -1)}

#: Suite configurations Bit-Split W4A8 must beat (issue 15), and the suite's own Bit-Split row (pass
#: a json recorded before the held-out choice to show the old defaults), shown under the variants.
BASELINES = ("minmax_w4a8", "eq_w4a8", "eq_w4a8_linear", "bitsplit_w4a8")
FLAGS = flags.FLAGS
flags.DEFINE_list("models", MODELS, "Suite models.")
flags.DEFINE_list("variants", list(VARIANTS), "Variants to run, in order.")
flags.DEFINE_string("cache_dir", None, "Suite cache (default: $EQ_TFLITE_REAL_MODELS or "
                    "~/.cache/eq-tflite-real-models).")
flags.DEFINE_bool("rerun", False, "Run cells that already have a result.")
flags.DEFINE_bool("write_only", False, "Only rewrite the Markdown section from the results json.")
flags.DEFINE_integer("num_calibration_samples", 64, "Calibration samples (all of the suite's 64).")
flags.DEFINE_string("results", str(REPO / "benchmarks" / "bitsplit_real.json"), "Results json (read and updated).")
flags.DEFINE_list("baselines", [], "Suite results jsons (tools/benchmark_real_models.py --results) whose "
                  f"{', '.join(BASELINES)} rows are copied into the results as the rows to beat (later "
                  "files win).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'bitsplit_choices' section "
                    "is rewritten.")


def _cache() -> Path:
    return Path(FLAGS.cache_dir or os.environ.get("EQ_TFLITE_REAL_MODELS")
                or Path.home() / ".cache" / "eq-tflite-real-models")


_REFERENCES: dict = {}


def _reference(model_dir: Path, x) -> list:
    """The float model's outputs on the evaluation samples (computed here, not cached on disk)."""
    from eq_tflite import runtime
    if model_dir not in _REFERENCES:
        model = (model_dir / "float.tflite").read_bytes()
        try:
            interp = runtime.make_interpreter(model, builtin_kernels=True)
        except Exception:  # noqa: BLE001  a custom op only XNNPACK runs (as the suite runner does)
            interp = runtime.make_interpreter(model, builtin_kernels=False)
        _REFERENCES[model_dir] = runtime.run_model(interp, [x], batch_size=50)
    return _REFERENCES[model_dir]


def run_cell(model: str, variant: str) -> dict:
    """Converts ``model`` with ``variant`` and scores it on the held-out evaluation samples."""
    import numpy as np

    from benchmarks.real_models.metrics import score_outputs
    from eq_tflite import api, runtime
    model_dir = _cache() / model
    meta = json.loads((model_dir / "meta.json").read_text())
    _, options, extra = VARIANTS[variant]
    kwargs = {"num_calibration_samples": FLAGS.num_calibration_samples, **extra}
    t0 = time.perf_counter()
    conv = api.convert_model((model_dir / "float.tflite").read_bytes(),
                             np.load(model_dir / "calib.npy"), method="bitsplit", weight_bits=4,
                             activation_bits=8, method_options=options, **kwargs)
    seconds = time.perf_counter() - t0
    x = np.load(model_dir / "eval.npy")
    reference = _reference(model_dir, x)
    interp = runtime.make_interpreter(conv.model, builtin_kernels=True)
    names = [d["name"] for d in interp.get_output_details()]
    row = score_outputs(meta["kind"], names, reference, runtime.run_model(interp, [x], batch_size=50))
    row.update(variant=variant, kind=meta["kind"], seconds=round(seconds, 1),
               method_seconds=round(conv.timings.get("method", 0.0), 1),
               layers=[{k: v for k, v in layer.items() if k not in ("peak_rss_mb", "elapsed_s")}
                       for layer in conv.plan.layers])
    return row


def _main_metric(row: dict, kind: str) -> str:
    key, _, _ = METRICS[kind]
    outs = [o["cosine"] for o in row["outputs"].values()]
    cos = row.get("cosine", sum(outs) / len(outs))
    return f"{row[key]:.3f} / {cos:.4f}"


def write_markdown(results: dict) -> None:
    from bench_doc import machine, update_section
    results = {m: results[m] for m in sorted(results, key=lambda m: (MODELS + [m]).index(m))}
    lines = ["## Bit-Split defaults on the real-model suite (W4A8)", "",
             f"Command: `python tools/tune_bitsplit.py` (results: `benchmarks/bitsplit_real.json`).", "",
             f"Machine: {machine()}", "",
             "Each suite model converted from its float `.tflite` with `--method bitsplit --weight_bits 4 "
             "--activation_bits 8` and the suite's 64 calibration samples; scored on the 500 held-out "
             "evaluation samples (other photos). Cells: the model's main metric / mean output cosine "
             "(classifiers: top-1 agreement; detectors: top-10 anchor agreement; segmentation: mask IoU; "
             "landmarks: error in pixels, lower is better). The `suite runner` rows are `tools/benchmark_real_models.py`'s "
             "(from the saved model for the EfficientNets), copied with `--baselines`; its Bit-Split rows "
             "were recorded before the held-out choice (the old defaults, main's `benchmarks/real_models.json`).", "",
             "Defaults chosen here: `--bs_holdout 0.25 --bs_ridge 0,0.1,1` (per-channel choice on held-out "
             "samples among plain rounding and three ridge-regularized, early-stopped fits), bias shift chosen "
             "per channel on the same held-out rows, iterative-MSE activations, 4,096 rows per layer, "
             "target: the float model's output. Rows per layer, descent rounds and the 256-sample default "
             "(more samples only add rows) stay as measured on Fashion-MNIST (section *Bit-Split*) until "
             "variants `rows_*` and `samples_32` are run here.", "",
             "| variant | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    kinds = {m: next(k for r in cells.values() for k, (key, _, _) in METRICS.items() if key in r)
             for m, cells in results.items()}
    variants = [v for v in VARIANTS if any(v in cells for cells in results.values())]
    for v in variants:
        cells = [_main_metric(results[m][v], kinds[m]) if v in results[m] else "" for m in results]
        lines.append(f"| `{v}`: {VARIANTS[v][0]} | " + " | ".join(cells) + " |")
    for config in BASELINES:
        key = f"suite:{config}"
        if any(key in cells for cells in results.values()):
            label = next(c[key]["label"] for c in results.values() if key in c)
            cells = [_main_metric(results[m][key], kinds[m]) if key in results[m] else "" for m in results]
            lines.append(f"| suite runner: {label} (`--configs {config}`) | "
                         + " | ".join(cells) + " |")
    lines += ["", "Where the held-out error appears (`default` runs, per layer, relative response error "
              "on the held-out quarter of the calibration samples; `ridge 0, end` is the paper's unregularized "
              "descent run to the end on the other three quarters):", "",
              "| model | layers | mean: absmax rounding | mean: ridge 0, end | mean: chosen | layers where "
              "ridge 0, end is worse than absmax rounding | of those, rows per weight < 4 |", "|---|---|---|---|---|---|---|"]
    for m, cells in results.items():
        layers = cells.get("default", {}).get("layers", [])
        if not layers or "held_rel_err_ridge0_end" not in layers[0]:
            continue
        mean = lambda k: sum(l[k] for l in layers) / len(layers)  # noqa: E731
        worse = [l for l in layers if l["held_rel_err_ridge0_end"] > l["held_rel_err_absmax"]]
        few = [l for l in worse if l["rows"] < 4 * _fan_in(l)]
        lines.append(f"| {m} | {len(layers)} | {mean('held_rel_err_absmax'):.4f} | "
                     f"{mean('held_rel_err_ridge0_end'):.4f} | {mean('held_rel_err_chosen'):.4f} | "
                     f"{len(worse)} | {len(few)} |")
    update_section(FLAGS.output, "bitsplit_choices", "\n".join(lines))


def _fan_in(layer: dict) -> int:
    """Weights per output channel (K) from the recorded weight shape."""
    shape = [int(d) for d in layer["weight_shape"].split("x")]
    if layer["op_type"] == "FULLY_CONNECTED":
        return shape[1]
    if layer["op_type"] == "DEPTHWISE_CONV_2D":
        return shape[1] * shape[2]
    return shape[1] * shape[2] * shape[3]


def main(argv: list[str]) -> None:
    del argv
    path = Path(FLAGS.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    for file in FLAGS.baselines:
        suite = json.loads(Path(file).read_text())
        for model, cells in suite.items():
            for config in BASELINES:
                if config in cells and "error" not in cells[config]:
                    results.setdefault(model, {})[f"suite:{config}"] = cells[config]
    if FLAGS.baselines:
        path.write_text(json.dumps(results, indent=1))
    if not FLAGS.write_only:
        for model in FLAGS.models:
            for variant in FLAGS.variants:
                if variant in results.get(model, {}) and not FLAGS.rerun:
                    continue
                row = run_cell(model, variant)
                results.setdefault(model, {})[variant] = row
                print(model, variant, _main_metric(row, row["kind"]), f"{row['seconds']}s", flush=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(path)
    write_markdown(results)

if __name__ == "__main__":
    app.run(main)
