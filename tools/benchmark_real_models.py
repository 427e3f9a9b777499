"""Real-model benchmark: every configuration on the suite of issue 15, against the float model.

    python -m benchmarks.real_models.build          # once: models, photos, samples
    python tools/benchmark_real_models.py [--models a,b] [--configs x,y] [--rerun]

For each suite model and configuration it converts in a fresh process (the CLI
``python -m eq_tflite.convert ...``, or ``benchmarks.real_models.baselines`` for
TFLite's own INT8 converter and Google's LiteRT Quantizer), timing that process
(wall seconds, model loading included), then runs the result with LiteRT's
builtin kernels on the model's held-out evaluation samples (other photos than
the 64 calibration samples) and scores it against the float model. A failed
conversion is recorded as its one-line error. Results accumulate in
``benchmarks/real_models.json`` (a configuration already there is skipped
unless ``--rerun``), and the ``real_models`` section of BENCHMARKS.md is
rewritten from it after every cell.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # pragma: no cover - a plain checkout that was never installed
    pass

from absl import flags  # noqa: E402

from benchmarks.real_models import default_cache_dir  # noqa: E402

#: key -> (label, runner, extra CLI flags). Runner: eq (eq_tflite.convert with the 64 samples),
#: datafree (eq_tflite.convert from the .keras file, no data), tflite_int8 / litert_quantizer.
CONFIGS = {
    "tflite_int8": ("TFLite INT8", "tflite_int8", []),
    "litert_quantizer": ("LiteRT Quantizer static_wi8_ai8", "litert_quantizer", []),
    # EasyQuant's objective is explicit in every row: the rows run before the default
    # changed to "activation" (decided on this suite) are the "linear" ones.
    "eq_w7a7": ("EasyQuant W7A7 (default: --eq_objective activation)", "eq",
                ["--bits", "7", "--eq_objective", "activation"]),
    "eq_w7a7_linear": ("EasyQuant W7A7 --eq_objective linear (the old default)", "eq",
                       ["--bits", "7", "--eq_objective", "linear"]),
    "eq_w8a8": ("EasyQuant W8A8 (default: activation)", "eq",
                ["--bits", "8", "--eq_objective", "activation"]),
    "eq_w8a8_linear": ("EasyQuant W8A8 --eq_objective linear", "eq",
                       ["--bits", "8", "--eq_objective", "linear"]),
    "minmax_w7a7": ("min/max W7A7", "eq", ["--method", "minmax", "--bits", "7"]),
    "minmax_w8a8": ("min/max W8A8", "eq", ["--method", "minmax", "--bits", "8"]),
    # Detectors: the score logits quantized over [-20, 20] (sigmoid 2e-9 .. 1 - 2e-9) instead of
    # their calibrated tail (BlazeFace: [-265, 2]); {scores} is the detector's score output.
    "eq_w8a8_scores": ("EasyQuant W8A8 --output_range SCORES=-20,20", "eq",
                       ["--bits", "8", "--output_range", "{scores}=-20,20"]),
    "datafree_w8a8": ("data-free W8A8 (default chain)", "datafree", ["--bits", "8"]),
    "bitsplit_w4a8": ("Bit-Split W4A8", "eq", ["--method", "bitsplit", "--weight_bits", "4",
                                               "--activation_bits", "8"]),
    "eq_w4a8": ("EasyQuant W4A8 (default: activation)", "eq",
                ["--weight_bits", "4", "--activation_bits", "8", "--eq_objective", "activation"]),
    "eq_w4a8_linear": ("EasyQuant W4A8 --eq_objective linear", "eq",
                       ["--weight_bits", "4", "--activation_bits", "8", "--eq_objective", "linear"]),
    "minmax_w4a8": ("min/max W4A8", "eq", ["--method", "minmax", "--weight_bits", "4",
                                           "--activation_bits", "8"]),
    "eq_w6a6": ("EasyQuant W6A6 (default: activation)", "eq",
                ["--bits", "6", "--eq_objective", "activation"]),
    "eq_w6a6_linear": ("EasyQuant W6A6 --eq_objective linear (the old default)", "eq",
                       ["--bits", "6", "--eq_objective", "linear"]),
    "kl_w7a7": ("KL W7A7", "eq", ["--method", "kl", "--bits", "7"]),
    "mse_w7a7": ("MSE W7A7 (methods/mse.py)", "eq", ["--method", "mse", "--bits", "7"]),
    "mse_w8a8": ("MSE W8A8 (methods/mse.py)", "eq", ["--method", "mse", "--bits", "8"]),
    # Mixed precision (issue 21): EasyQuant, 8-bit activations, weight-size budget search
    # (layers lowered to 4 bits are stored as packed INT4), and --keep_8bit on --bits 7.
    "mixed_eq_w8_budget50": ("EasyQuant W8A8, weight budget 50% of int8 (--weight_size_ratio 0.5)", "eq",
                             ["--bits", "8", "--weight_size_ratio", "0.5"]),
    "mixed_eq_w8_budget60": ("EasyQuant W8A8, weight budget 60% of int8", "eq",
                             ["--bits", "8", "--weight_size_ratio", "0.6"]),
    "mixed_eq_w8_budget75": ("EasyQuant W8A8, weight budget 75% of int8", "eq",
                             ["--bits", "8", "--weight_size_ratio", "0.75"]),
    "mixed_eq_w7a7_keep8": ("EasyQuant W7A7 --keep_8bit input,first,last", "eq",
                            ["--bits", "7", "--keep_8bit", "input,first,last"]),
    "mixed_eq_w8_budget60_bc": ("EasyQuant W8A8, weight budget 60% of int8, --bias_correction empirical",
                                "eq", ["--bits", "8", "--weight_size_ratio", "0.6",
                                       "--bias_correction", "empirical"]),
    "mixed_bs_w8_budget60": ("Bit-Split W8A8, weight budget 60% of int8", "eq",
                             ["--method", "bitsplit", "--bits", "8", "--weight_size_ratio", "0.6"]),
    "mixed_eq_w8_budget60_output_gptq": ("EasyQuant W8A8, weight budget 60% of int8, layers ranked by "
                                         "output noise with GPTQ-rounded 4 bits", "eq",
                                         ["--bits", "8", "--weight_size_ratio", "0.6",
                                          "--budget_sensitivity", "output_gptq"]),
    "mixed_eq_w8_budget60_layer": ("EasyQuant W8A8, weight budget 60% of int8, layers ranked by "
                                   "their own cosine (the old ranking)", "eq",
                                   ["--bits", "8", "--weight_size_ratio", "0.6",
                                    "--budget_sensitivity", "layer"]),
}
#: One-flag variations of a default configuration: the tables that chose the defaults (BENCHMARKS.md).
#: Each changes exactly one option of its base row ("eq_w7a7" or "datafree_w8a8").
SWEEPS = {
    "eq_w7a7": {
        "clip_budget_0": ("--eq_clip_budget", "0"),
        "clip_budget_1pct": ("--eq_clip_budget", "0.01"),
        "init_kl": ("--eq_init", "kl"),
        "init_mse": ("--eq_init", "mse"),
        "inputs_float": ("--eq_inputs", "float"),
        "rounds_2": ("--eq_rounds", "2"),
        "rows_1024": ("--eq_max_rows", "1024"),
        "rows_16384": ("--eq_max_rows", "16384"),
        "samples_32": ("--num_calibration_samples", "32"),
        "keep_8bit_input": ("--keep_8bit", "input"),
        # the seed-noise band of the default (row sampling): what "unchanged" means
        "seed_1": ("--seed", "1"),
        "seed_2": ("--seed", "2"),
    },
    "eq_w6a6": {
        "keep_8bit_input": ("--keep_8bit", "input"),
    },
    "eq_w4a8": {
        "rounding_nearest": ("--eq_rounding", "nearest"),
        "gptq_target_layer": ("--eq_gptq_target", "layer"),
        "gptq_target_float": ("--eq_gptq_target", "float"),
    },
    "eq_w8a8": {
        "init_mse": ("--eq_init", "mse"),
        "clip_budget_0": ("--eq_clip_budget", "0"),
        "inputs_float": ("--eq_inputs", "float"),
    },
    "datafree_w8a8": {
        "k_4": ("--dfq_sigmas", "4"),
        "k_8": ("--dfq_sigmas", "8"),
        "k_12": ("--dfq_sigmas", "12"),
        "cle_relu6_relu": ("--cle_relu6", "relu"),
        "no_cle": ("--nocross_layer_equalization",),
        "no_bias_absorption": ("--nobias_absorption",),
        "no_bias_correction": ("--bias_correction", "off"),
    },
}
for _base, _variants in SWEEPS.items():
    _label, _runner, _extra = CONFIGS[_base]
    for _name, _flags in _variants.items():
        CONFIGS[f"{_base}__{_name}"] = (f"{_label.split(' (')[0]} {' '.join(_flags)}", _runner, [*_extra, *_flags])
MODELS = ["efficientnet_lite1", "efficientnet_lite2", "face_detection_short_range", "selfie_segmentation",
          "palm_detection_lite", "hand_landmark_lite"]

FLAGS = flags.FLAGS
flags.DEFINE_string("cache_dir", None, "Suite cache (default: $EQ_TFLITE_REAL_MODELS or "
                    "~/.cache/eq-tflite-real-models); built by python -m benchmarks.real_models.build.")
flags.DEFINE_list("models", MODELS, "Suite models to run.")
flags.DEFINE_list("configs", list(CONFIGS), "Configurations to run, in order.")
flags.DEFINE_list("sweep_models", ["efficientnet_lite1", "efficientnet_lite2"],
                  "Models the one-flag sweeps (SWEEPS: configurations named BASE__VARIANT) run on.")
flags.DEFINE_bool("rerun", False, "Run configurations that already have a result in the json.")
flags.DEFINE_integer("num_calibration_samples", 64, "Calibration samples given to every calibrated method.")
flags.DEFINE_integer("timeout", 3600, "Seconds before a conversion process is stopped (recorded as a failure).")
flags.DEFINE_bool("rescore", False, "Re-score the kept model files (runs/CONFIG.tflite) of the rows in the "
                  "json with the current metrics; convert nothing.")
flags.DEFINE_bool("write_only", False, "Only rewrite the Markdown section from the results json; run nothing.")
flags.DEFINE_string("results", str(REPO / "benchmarks" / "real_models.json"), "Results json (read and updated).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'real_models' section is rewritten.")

COMMAND = "python tools/benchmark_real_models.py"


def _error_line(stderr: str) -> str:
    """The process's ``error:`` line, plus the first native (MLIR) error line if it printed one."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    last = (errors[-1] if errors else (lines[-1] if lines else "no output")).removeprefix("error:").strip()
    native = [l for l in lines if "error:" in l and not l.startswith("error:")]
    if native:
        last += f" (first native error: {native[0].split('error:', 1)[1].strip()})"
    return last[:300]


def _command(config: str, model_dir: Path, meta: dict, out: Path) -> list[str]:
    _, runner, extra = CONFIGS[config]
    calib = str(model_dir / "calib.npy")
    saved_model = model_dir / "saved_model"
    src = str(saved_model if saved_model.is_dir() else model_dir / "float.tflite")
    if runner in ("tflite_int8", "litert_quantizer"):
        if runner == "litert_quantizer":
            src = str(model_dir / "float.tflite")
        return [sys.executable, "-m", "benchmarks.real_models.baselines", runner, src, calib, str(out)]
    base = [sys.executable, "-m", "eq_tflite.convert", "--output", str(out), "--noprogress"]
    if runner == "datafree":
        keras = model_dir / "model.keras"
        lo, hi = meta["float_range"]
        return [*base[:3], str(keras if keras.exists() else model_dir / "float.tflite"), *base[3:], *extra,
                "--input_range", f"{lo},{hi}"]
    if any("{scores}" in e for e in extra):
        extra = [e.replace("{scores}", _score_output(model_dir / "float.tflite")) for e in extra]
    samples = [] if "--num_calibration_samples" in extra else \
        ["--num_calibration_samples", str(FLAGS.num_calibration_samples)]
    return [*base[:3], src, *base[3:], *extra, "--calibration_data", calib, *samples]


def _score_output(float_tflite: Path) -> str:
    """A detector's score output (one value per anchor, as ``metrics.score_outputs`` picks it)."""
    from eq_tflite.graph import Graph
    from eq_tflite.io.sources import float_model_of, signature_output_names
    model = float_model_of(str(float_tflite), [])
    g, names = Graph.from_tflite(model), signature_output_names(model)
    t = next(t for t in g.outputs if len(g.tensors[t].shape) == 3 and g.tensors[t].shape[-1] == 1)
    return names.get(t, g.tensors[t].name)


def _reference(model_dir: Path, x) -> list:
    import numpy as np

    from eq_tflite import runtime
    path = model_dir / "reference.npz"
    if path.exists():
        with np.load(path) as z:
            return [z[f"out{i}"] for i in range(len(z.files))]
    model = (model_dir / "float.tflite").read_bytes()
    try:
        interp = runtime.make_interpreter(model, builtin_kernels=True)
    except Exception:  # noqa: BLE001  a custom op only XNNPACK runs (selfie's transposed conv)
        interp = runtime.make_interpreter(model, builtin_kernels=False)
    outs = runtime.run_model(interp, [x], batch_size=50)
    np.savez(path, **{f"out{i}": o for i, o in enumerate(outs)})
    return outs


def _evaluate(model: bytes, x, reference: list, meta: dict) -> dict:
    from benchmarks.real_models.metrics import score_outputs
    from eq_tflite import runtime
    interp = runtime.make_interpreter(model, builtin_kernels=True)
    names = [d["name"] for d in interp.get_output_details()]
    outs = runtime.run_model(interp, [x], batch_size=50)
    if [o.shape for o in outs] != [r.shape for r in reference]:
        raise ValueError(f"output shapes {[o.shape for o in outs]} differ from float's "
                         f"{[r.shape for r in reference]}")
    return score_outputs(meta["kind"], names, reference, outs)


def run_cell(model: str, config: str, cache: Path) -> dict:
    import numpy as np
    from bench_doc import fresh_output, run_in_repo, shown_command
    model_dir = cache / model
    meta = json.loads((model_dir / "meta.json").read_text())
    out = fresh_output(model_dir, config)
    cmd = _command(config, model_dir, meta, out)
    row = {"config": config, "label": CONFIGS[config][0], "command": shown_command(cmd, cache)}
    proc, seconds = run_in_repo(cmd, REPO, FLAGS.timeout)
    row["seconds"] = round(seconds, 1)
    ok = proc is not None and proc.returncode == 0 and out.exists()
    if proc is None:
        row["error"] = f"timeout after {FLAGS.timeout}s"
    else:
        if not ok:
            row["error"] = _error_line(proc.stderr)
        row["summary"] = [l for l in proc.stdout.splitlines() if l.strip()][-6:]
    if not ok:
        return row
    from eq_tflite.mixed import file_weight_bytes
    row["weight_bytes"] = file_weight_bytes(out.read_bytes())
    x = np.load(model_dir / "eval.npy", mmap_mode="r")
    try:
        row.update(_evaluate(out.read_bytes(), np.asarray(x), _reference(model_dir, np.asarray(x)), meta))
    except Exception as err:  # noqa: BLE001 - recorded in the table, never a crash
        from eq_tflite.errors import first_line
        row["error"] = f"evaluation: {type(err).__name__}: {first_line(err)}"
    return row


def _fmt(v, f: str) -> str:
    return "-" if v is None else format(v, f)


def _cells(row: dict, kind: str) -> str:
    if "error" in row:
        return f"failed: `{row['error']}`"
    outs = row.get("outputs", {})
    per = "; ".join(f"{n}: {o['cosine']:.5f} / {o['snr_db']:.1f}" for n, o in outs.items())
    key = {"classifier": lambda: f"agreement {100 * row['agreement']:.1f}%, cosine {row['cosine']:.5f}",
           "detector": lambda: f"top-10 anchors {100 * row['top10_anchors']:.1f}%" + (
               f", detections IoU {row['detection_iou']:.4f}" if "detection_iou" in row else ""),
           "segmentation": lambda: f"mask IoU {row['mask_iou']:.4f}",
           "landmarks": lambda: f"landmarks {row['landmark_px']:.2f} px"}[kind]()
    own = _summary_agreement(row)
    if own:
        key += f" (its own summary: {own})"
    return key if kind == "classifier" else f"{key}; cosine / SNR dB per output: {per}"


def _summary_agreement(row: dict) -> str | None:
    """What eq-tflite's own summary claimed (agreement, and on which samples), to compare with held-out."""
    import re
    for line in row.get("summary", []):
        m = re.search(r"vs float on (.*?)(?: \(.*?\))?: .*?top-1 agreement ([\d.]+)%", line)
        if m:
            return f"{m.group(2)}% on {m.group(1)}"
    return None


def _float_confidence(reference: Path) -> str:
    """How decided the float classifier is on the evaluation crops (agreement is harsh when it is not)."""
    import numpy as np
    with np.load(reference) as z:
        logits = z["out0"].astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.sort(logits, 1)
    return (f"The float model on these {len(logits)} crops: median top-1 probability "
            f"{np.median(p.max(1)):.2f}, median top-1/top-2 logit margin {np.median(top[:, -1] - top[:, -2]):.2f} "
            "(many crops are textures and scenes without one ImageNet object, so top-1 agreement is a strict test).")


def write_markdown(results: dict, cache: Path) -> None:
    from bench_doc import machine, update_section
    lines = ["## Real models (issue 15)", "",
             f"Commands: `python -m benchmarks.real_models.build` then `{COMMAND}` "
             "(add `--models`/`--configs` to run a subset; results accumulate in "
             "`benchmarks/real_models.json`).", "",
             f"Machine: {machine()} (shared with other jobs while this ran: seconds are indicative).", "",
             "Each configuration is one process converting the model (seconds: its wall time, model "
             "loading included); the result runs on LiteRT's builtin kernels on the model's evaluation "
             "samples: 500 seeded crops of photos *not* used for calibration (calibration: 64 crops of 6 "
             "other photos; `manifest.json` in the cache lists them). Everything is against the float "
             "model. Classifiers: top-1 agreement and logit cosine. Detectors: share of the float model's "
             "10 best anchors (by score) among the quantized model's 10 best (anchors tied at the 10th "
             "quantized score count with the chance a random tie-break keeps them), and the IoU of the "
             "sets of anchors scoring above 0.5 (what the detector reports before NMS). Segmentation: mask IoU at "
             "0.5. Landmarks: mean (x, y) error in input pixels. Per output: mean cosine / SNR in dB. "
             "EfficientNet-Lite ports start from their SavedModel (data-free: from `model.keras`, which "
             "has the BatchNorm statistics), MediaPipe models from the float `.tflite` as shipped. "
             "TFLite INT8 on a `.tflite` is TFLite's calibrator + MLIR quantizer started from the "
             "flatbuffer (TF's converter cannot start from a .tflite). LiteRT Quantizer: `ai-edge-quantizer` "
             "on the float `.tflite`, same 64 samples. Neither reference tool reads the MediaPipe files as "
             "shipped, so both run on eq-tflite's expanded float file (`eq_tflite/io/normalize.py`: float16 "
             "weights, old op codes, selfie's custom transposed convolution lowered); eq-tflite itself "
             "takes the shipped file. A float reference that only XNNPACK can run (selfie's custom op) "
             "runs under XNNPACK. MediaPipe samples are three quarters photos of people "
             "(OpenCV's and scikit-image's sample photos, LFW faces pasted on photos; "
             "`benchmarks/real_models/images.py`), split by photo like the rest; the rows measure how well "
             "each tool preserves the float model's outputs, not task accuracy (no labels). Every calibrated method gets the same 64 samples "
             "(`--num_calibration_samples 64`), so eq-tflite's own summary scores those (shown as such). "
             "A configuration missing from a table has not been run yet (the command above fills it in). "
             "EasyQuant's start changed on this suite's evidence from the calibration min/max to the mse "
             "method's ranges (`--eq_init mse`, the default since 2026-12-06): the `--eq_init mse` rows "
             "are the current default; an EasyQuant row run before that change ran with the min/max start "
             "(its stored command says `# eq_init max`). Since the same day EasyQuant rounds layers of at "
             "most 4 weight bits with GPTQ (`--eq_rounding gptq`); the W4A8 rows were rerun with it "
             "(`--eq_rounding nearest`: the old rounding).",
             ""]
    for model in MODELS:
        rows = results.get(model)
        if not rows:
            continue
        meta = json.loads((cache / model / "meta.json").read_text()) if (cache / model / "meta.json").exists() \
            else {"kind": next(iter(rows.values())).get("kind", "classifier")}
        kind = meta["kind"]
        size = meta.get("input_size")
        lines += [f"### {model}" + (f" ({size[0]}x{size[1]}, input range {meta['float_range']})" if size else ""),
                  ""]
        if meta.get("source"):
            lines += [f"Source: {meta['source']}; input normalization from {meta['normalization_source']}.", ""]
        if kind == "classifier" and (cache / model / "reference.npz").exists():
            lines += [_float_confidence(cache / model / "reference.npz"), ""]
        lines += ["| configuration | seconds | result |", "|---|---|---|"]
        for config in CONFIGS:
            if config in rows and "__" not in config:
                r = rows[config]
                lines.append(f"| {r['label']} | {_fmt(r.get('seconds'), '.0f')} | {_cells(r, kind)} |")
        lines.append("")
    lines += _sweep_tables(results)
    update_section(FLAGS.output, "real_models", "\n".join(lines))


def _key_metric(row: dict) -> str:
    """The one number per model kind a sweep table compares."""
    if "agreement" in row:
        return f"{100 * row['agreement']:.1f}% / {row['cosine']:.5f}"
    for key, fmt in (("detection_iou", "detections IoU {:.4f}"), ("mask_iou", "mask IoU {:.4f}"),
                     ("landmark_px", "{:.2f} px")):
        if key in row:
            return fmt.format(row[key])
    return "-"


def _sweep_tables(results: dict) -> list[str]:
    """One table per swept default: each one-flag variant against its base row, per classifier."""
    models = [m for m in MODELS if any("__" in c for c in results.get(m, {}))]
    if not models:
        return []
    lines = ["### Defaults chosen on the suite", "",
             "Each row changes one option of the base row above it (classifiers: agreement / cosine "
             "on the held-out crops; detectors: detections IoU; segmentation: mask IoU; seconds). The first row of each "
             "table is the base row as run (for EasyQuant: with the min/max start, the default when it ran; "
             "`--eq_init mse` is the default now).", ""]
    for base, variants in SWEEPS.items():
        lines += [f"**{CONFIGS[base][0]}**", "", "| variant | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        for config in [base, *(f"{base}__{v}" for v in variants)]:
            cells = []
            for m in models:
                r = results.get(m, {}).get(config)
                cells.append("-" if r is None else f"failed: `{r['error'][:60]}`" if "error" in r else
                             f"{_key_metric(r)} ({r.get('seconds', 0):.0f} s)")
            name = "base" if config == base else " ".join(SWEEPS[base][config.split("__")[1]])
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv: list[str]) -> int:
    del argv
    from eq_tflite.cli import fail
    from eq_tflite.io.atomic import write_atomic
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    unknown = [c for c in FLAGS.configs if c not in CONFIGS] + [m for m in FLAGS.models if m not in MODELS]
    if unknown:
        return fail(f"unknown model or configuration: {', '.join(unknown)}")
    missing = [m for m in FLAGS.models if not (cache / m / "meta.json").exists()]
    if missing:
        return fail(f"{', '.join(missing)} not built in {cache}: run python -m benchmarks.real_models.build")
    results_path = Path(FLAGS.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if FLAGS.write_only:
        write_markdown(results, cache)
        return 0
    if FLAGS.rescore:
        import numpy as np
        for model in FLAGS.models:
            meta = json.loads((cache / model / "meta.json").read_text())
            x = np.asarray(np.load(cache / model / "eval.npy", mmap_mode="r"))
            for config, row in results.get(model, {}).items():
                out = cache / model / "runs" / f"{config}.tflite"
                if config in FLAGS.configs and "error" not in row and out.exists():
                    row.update(_evaluate(out.read_bytes(), x, _reference(cache / model, x), meta))
        write_atomic(results_path, json.dumps(results, indent=1).encode())
        write_markdown(results, cache)
        return 0
    for model in FLAGS.models:
        for config in FLAGS.configs:
            if config in results.get(model, {}) and not FLAGS.rerun:
                continue
            if "__" in config and model not in FLAGS.sweep_models:
                continue
            row = run_cell(model, config, cache)
            # re-read first: another run (other models) may have added rows meanwhile
            results = json.loads(results_path.read_text()) if results_path.exists() else {}
            results.setdefault(model, {})[config] = row
            write_atomic(results_path, json.dumps(results, indent=1).encode())
            write_markdown(results, cache)
            print(f"{model} | {row['label']} | {row.get('seconds')} s | "
                  f"{_cells(row, json.loads((cache / model / 'meta.json').read_text())['kind'])}", flush=True)
    write_markdown(json.loads(results_path.read_text()) if results_path.exists() else results, cache)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
