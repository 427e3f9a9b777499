"""Mixed precision on the real-model suite (issue 21): Pareto tables and a plot.

    python tools/benchmark_mixed.py [--models a,b] [--configs x,y] [--write_only]

Runs the ``mixed_*`` configurations of ``tools/benchmark_real_models.py``
(EasyQuant W8A8 under a weight budget of 50/60/75% of the int8 weights, and
``--bits 7 --keep_8bit input,first,last``) on the suite's held-out samples,
each in a fresh process, into ``benchmarks/mixed_precision.json``. Then it
writes the ``mixed_precision`` section of BENCHMARKS.md and
``benchmarks/mixed_pareto.png`` from that json and the suite's own
``benchmarks/real_models.json`` (TFLite INT8, all-8 = EasyQuant W8A8, all-4 =
EasyQuant W4A8, strict EasyQuant W7A7). Weight bytes are the weighted ops'
weight tensors as stored in the file (int8: one byte per weight, packed INT4:
half); rows from the suite's json (written before files recorded them) are
computed from the float model: int8 for all-8, every packable layer packed for
all-4 (verify checks that a packed file gives the same outputs as its int8
container, so the all-4 row's accuracy is the unpacked run's).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from absl import flags  # noqa: E402

from benchmarks.real_models import default_cache_dir  # noqa: E402

MIXED_CONFIGS = ["mixed_eq_w8_budget50", "mixed_eq_w8_budget60", "mixed_eq_w8_budget75",
                 "mixed_eq_w7a7_keep8", "mixed_eq_w8_budget60_bc", "mixed_eq_w8_budget60_layer",
                 "mixed_eq_w8_budget60_output_gptq"]
MODELS = ["efficientnet_lite1", "efficientnet_lite2", "face_detection_short_range",
          "selfie_segmentation", "palm_detection_lite", "hand_landmark_lite"]
#: The suite's rows each table starts from (benchmarks/real_models.json).
SUITE_ROWS = {"tflite_int8": "TFLite INT8", "eq_w8a8": "all-8 (EasyQuant W8A8)",
              "eq_w4a8": "all-4 (EasyQuant W4A8)"}
BUDGET_ROWS = {"mixed_eq_w8_budget50": "budget 50% (EasyQuant, A8)",
               "mixed_eq_w8_budget60": "budget 60% (EasyQuant, A8)",
               "mixed_eq_w8_budget75": "budget 75% (EasyQuant, A8)",
               "mixed_eq_w8_budget60_bc": "budget 60%, --bias_correction empirical",
               "mixed_eq_w8_budget60_layer": "budget 60%, --budget_sensitivity layer (the old ranking)",
               "mixed_eq_w8_budget60_output_gptq": "budget 60%, --budget_sensitivity output_gptq"}
#: The suite row that is the current default command for a configuration (a sweep row whose
#: flag became the default since the base row ran; its command says so).
CURRENT = {"eq_w7a7": "eq_w7a7__init_mse", "eq_w8a8": "eq_w8a8__init_mse"}


def _current(ref: dict, config: str) -> tuple[str, dict | None]:
    """(config, row) of the suite row that runs ``config``'s current default."""
    for c in (CURRENT.get(config), config):
        if c and c in ref:
            return c, ref[c]
    return config, None

FLAGS = flags.FLAGS
flags.DEFINE_list("models", MODELS, "Suite models.")
flags.DEFINE_list("configs", MIXED_CONFIGS, "Mixed configurations to run.")
flags.DEFINE_bool("write_only", False, "Only write the section and the plot from the json files.")
flags.DEFINE_bool("rerun", False, "Run configurations that already have a result in the json.")
flags.DEFINE_string("results", str(REPO / "benchmarks" / "mixed_precision.json"), "Mixed results json.")
flags.DEFINE_string("suite_results", str(REPO / "benchmarks" / "real_models.json"),
                    "The suite's results json (reference rows).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file (section mixed_precision).")
flags.DEFINE_string("plot", str(REPO / "benchmarks" / "mixed_pareto.png"), "Pareto plot (PNG).")
flags.DEFINE_string("cache_dir", None, "Suite cache (default: the suite's).")

COMMAND = "python tools/benchmark_mixed.py"
#: Main metric per model kind: (key, label, scale, format, higher is better).
METRIC = {"classifier": ("agreement", "top-1 agreement", 100, ".1f", True),
          "detector": ("detection_iou", "detections IoU", 1, ".4f", True),
          "segmentation": ("mask_iou", "mask IoU", 1, ".4f", True),
          "landmarks": ("landmark_px", "landmark error px", 1, ".2f", False)}


def _float_sizes(model_dir: Path) -> tuple[int, int]:
    """(int8 weight bytes, all-4 packed weight bytes) of a suite model's float graph."""
    from eq_tflite import api, mixed
    from eq_tflite.graph import Graph
    from eq_tflite.grid import BitWidths
    graph = Graph.from_tflite(api.float_model_of(str(model_dir / "float.tflite")))
    return mixed.weight_bytes(graph), mixed.weight_bytes(graph, BitWidths(4, 8))


def _value(row: dict, kind: str) -> str:
    key, _, scale, fmt, _ = METRIC[kind]
    if "error" in row:
        return f"failed: {row['error'][:80]}"
    v = row.get(key)
    out = "-" if v is None else format(scale * v, fmt) + ("%" if kind == "classifier" else "")
    if kind == "classifier" and row.get("cosine") is not None:
        out += f" / {row['cosine']:.5f}"
    elif row.get("outputs"):  # the task metric is noisy on these photos: the outputs' cosines too
        out += " / " + ", ".join(f"{o['cosine']:.4f}" for o in row["outputs"].values())
    return out


def _summary_widths(row: dict) -> str:
    for line in row.get("summary", []):
        if "widths:" in line:
            return line.split("widths:", 1)[1].strip().split(";")[0]
    return ""


def write(results: dict, suite: dict, cache: Path) -> None:
    from bench_doc import machine, update_section
    lines = ["## Mixed precision (issue 21)", "",
             f"Command: `{COMMAND}` (runs the `mixed_*` configurations of "
             "`tools/benchmark_real_models.py` into `benchmarks/mixed_precision.json`; "
             "`--write_only` rewrites this section and `benchmarks/mixed_pareto.png`).", "",
             f"Machine: {machine()}, shared with other jobs (seconds are indicative).", "",
             "Same suite, samples and scoring as *Real models*: 64 calibration crops, 500 held-out "
             "crops of other photos, LiteRT's builtin kernels, everything against the float model. "
             "Weight bytes: the weighted ops' weight tensors as stored (int8: 1 byte per weight, "
             "packed INT4: half; biases and scales not counted). Budget rows: EasyQuant with 8-bit "
             "activations, `--bits 8 --weight_size_ratio R`: the search lowers the layers whose "
             "4-bit weights add the least noise at the model outputs (`--budget_sensitivity "
             "output`) to 4-bit weights (packed INT4, GPTQ-rounded) until the weights fit R of "
             "the int8 bytes. TFLite INT8, all-8 and all-4 are the suite's rows run with the "
             "current defaults (all-8: its `--eq_init mse` row; all-4 ran unpacked, its bytes "
             "are the packed size, same outputs). Strict W7A7 in the `--keep_8bit` lines: the "
             "suite's `--eq_init mse` row (the current default).", "",
             "Sony MCT's mixed precision is not beside it: `pip install model-compression-toolkit` "
             "installs 2.6.1, whose Keras entry point (`mct.ptq.keras_post_training_quantization`) "
             "refuses this TensorFlow: \"Tensorflow must be installed with a version of 2.15 or lower "
             "to use keras_post_training_quantization\" (the project needs 2.20-2.21). Its PyTorch "
             "entry point would need torch and a PyTorch definition of the models, and exports "
             "ONNX or fake-quantized models, not a stock .tflite.", ""]
    for model in FLAGS.models:
        meta_path = cache / model / "meta.json"
        if not meta_path.exists():
            continue
        kind = json.loads(meta_path.read_text())["kind"]
        rows = results.get(model, {})
        ref = suite.get(model, {})
        if not rows:
            continue
        int8, all4 = _float_sizes(cache / model)
        _, label, _, _, _ = METRIC[kind]
        metric = label + (" / cosine" if kind == "classifier" else " / cosine per output")
        lines += [f"### {model}", "", f"| configuration | weight bytes (of int8) | {metric} | "
                  "4-bit layers |", "|---|---|---|---|"]
        for config, name in SUITE_ROWS.items():
            used, row = _current(ref, config)
            if row is not None:
                size = all4 if config == "eq_w4a8" else int8
                lines.append(f"| {name} | {size:,} ({size / int8:.2f}) | {_value(row, kind)} | "
                             f"{'all' if config == 'eq_w4a8' else 'none'} |")
        for config, name in BUDGET_ROWS.items():
            if config in rows:
                r = rows[config]
                size = r.get("weight_bytes")
                sz = "-" if size is None else f"{size:,} ({size / int8:.2f})"
                note = r.get("command", "").partition("  # ")[2]  # a row run under older defaults
                shown = f"{name} ({note})" if note else name
                lines.append(f"| {shown} | {sz} | {_value(r, kind)} | {_summary_widths(r)} |")
        lines.append("")
        keep = rows.get("mixed_eq_w7a7_keep8")
        _, strict_row = _current(ref, "eq_w7a7")
        if keep is not None and strict_row is not None and "tflite_int8" in ref:
            key = METRIC[kind][0]
            higher = METRIC[kind][4]
            strict, k8, int8_v = strict_row.get(key), keep.get(key), ref["tflite_int8"].get(key)
            note = ""
            if None not in (strict, k8, int8_v):
                gap = (int8_v - strict) if higher else (strict - int8_v)
                got = (k8 - strict) if higher else (strict - k8)
                note = (f"strict W7A7 is {'ahead of' if gap <= 0 else 'behind'} TFLite INT8 by "
                        f"{abs(gap) * METRIC[kind][2]:{METRIC[kind][3]}}"
                        + ("; keep_8bit recovers " + f"{100 * got / gap:.0f}% of that gap" if gap > 0 else
                           f"; keep_8bit moves it by {got * METRIC[kind][2]:+{METRIC[kind][3]}}"))
            lines += [f"`--bits 7 --keep_8bit input,first,last`: {_value(keep, kind)} against strict "
                      f"W7A7 {_value(strict_row, kind)} and TFLite INT8 "
                      f"{_value(ref['tflite_int8'], kind)} ({note}).", ""]
    lines += ["Plot: `benchmarks/mixed_pareto.png` (weight bytes against the main metric per model).", ""]
    update_section(FLAGS.output, "mixed_precision", "\n".join(lines))
    _plot(results, suite, cache)


def _plot(results: dict, suite: dict, cache: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [m for m in FLAGS.models if results.get(m) and (cache / m / "meta.json").exists()]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        kind = json.loads((cache / model / "meta.json").read_text())["kind"]
        key, label, scale, _, _ = METRIC[kind]
        int8, all4 = _float_sizes(cache / model)
        pts = []
        ref = suite.get(model, {})
        for config, size in (("eq_w4a8", all4), ("eq_w8a8", int8)):
            _, row = _current(ref, config)
            if (row or {}).get(key) is not None:
                pts.append((size, scale * row[key], config.replace("eq_", "")))
        for config in ("mixed_eq_w8_budget50", "mixed_eq_w8_budget60", "mixed_eq_w8_budget75"):
            r = results[model].get(config, {})
            if r.get(key) is not None and r.get("weight_bytes"):
                pts.append((r["weight_bytes"], scale * r[key], config.split("_")[-1]))
        pts.sort()
        if pts:
            ax.plot([p[0] / 1024 for p in pts], [p[1] for p in pts], "-o", label="EasyQuant (A8)")
            for x, y, t in pts:
                ax.annotate(t, (x / 1024, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if ref.get("tflite_int8", {}).get(key) is not None:
            ax.axhline(scale * ref["tflite_int8"][key], color="gray", ls="--", label="TFLite INT8")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("weight KiB")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FLAGS.plot, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    del argv
    from eq_tflite.cli import fail
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    unknown = [c for c in FLAGS.configs if c not in MIXED_CONFIGS] + \
        [m for m in FLAGS.models if m not in MODELS]
    if unknown:
        return fail(f"unknown model or configuration: {', '.join(unknown)}")
    if not FLAGS.write_only:
        scratch = Path(FLAGS.results).with_suffix(".md.tmp")  # the runner's own section, not kept
        cmd = [sys.executable, str(REPO / "tools" / "benchmark_real_models.py"),
               "--models", ",".join(FLAGS.models), "--configs", ",".join(FLAGS.configs),
               "--results", FLAGS.results, "--output", str(scratch)]
        if FLAGS.cache_dir:
            cmd += ["--cache_dir", FLAGS.cache_dir]
        if FLAGS.rerun:
            cmd.append("--rerun")
        proc = subprocess.run(cmd, cwd=REPO)
        scratch.unlink(missing_ok=True)
        if proc.returncode != 0:
            return proc.returncode
    results_path, suite_path = Path(FLAGS.results), Path(FLAGS.suite_results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    suite = json.loads(suite_path.read_text()) if suite_path.exists() else {}
    write(results, suite, cache)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
