"""Conversion time and memory on the real-model suite: eq-tflite against TFLite's own int8 conversion.

    python tools/benchmark_calibration.py [--models efficientnet_lite1,efficientnet_lite2]
        [--sides tflite,eq_w7,bitsplit_w4a8] [--runs 3] [--output BENCHMARKS.md]

Each model of the real-model suite (``python -m benchmarks.real_models.build``;
the EfficientNet-Lite ports at their native 240x240 and 260x260) is converted
from the same SavedModel with the same 64 calibration samples by:

* ``tflite``: TFLite's own full-integer conversion
  (``benchmarks.real_models.baselines tflite_int8``: ``TFLiteConverter`` with the
  samples as representative dataset, ``TFLITE_BUILTINS_INT8``);
* ``eq_w7``: ``eq-tflite --bits 7`` (the default method, EasyQuant, with its
  defaults), ``--num_calibration_samples 64``;
* ``bitsplit_w4a8``: ``eq-tflite --method bitsplit --weight_bits 4
  --activation_bits 8``.

Every conversion is a whole process (Python start, imports, load, calibrate,
convert, write) writing into a temporary directory. The sides alternate
(run 1 of every side, then run 2, ...), so a machine shared with other jobs
loads them alike; the table gives medians of ``--runs`` and each side's ratio to
TFLite's median, and the peak RSS of each process (``resource.getrusage`` of
the children of a wrapper process, max over the runs).
"""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 3, "Whole-process runs per side (median).")
flags.DEFINE_list("models", ["efficientnet_lite1", "efficientnet_lite2"],
                  "Suite models with a SavedModel (built by python -m benchmarks.real_models.build).")
flags.DEFINE_list("sides", ["tflite", "eq_w7", "bitsplit_w4a8"], "Conversions to time; tflite is the reference.")
flags.DEFINE_string("cache_dir", None, "Suite cache (default: $EQ_TFLITE_REAL_MODELS or "
                    "~/.cache/eq-tflite-real-models).")
flags.DEFINE_string("output", None, "Markdown file whose 'calibration' section is rewritten.")
flags.DEFINE_list("eq_args", [], "Extra eq-tflite flags for the eq sides.")

#: side -> eq-tflite flags (None: TFLite's own conversion).
SIDES = {"tflite": None, "eq_w7": ["--bits", "7"],
         "bitsplit_w4a8": ["--method", "bitsplit", "--weight_bits", "4", "--activation_bits", "8"]}
LABELS = {"tflite": "TFLite INT8", "eq_w7": "`eq-tflite --bits 7`", "bitsplit_w4a8": "Bit-Split W4A8"}


def command(side: str, saved_model: Path, calib: Path, out: Path) -> list[str]:
    """The whole-process command of one side."""
    if SIDES[side] is None:
        return [sys.executable, "-m", "benchmarks.real_models.baselines", "tflite_int8",
                str(saved_model), str(calib), str(out)]
    return [sys.executable, "-m", "eq_tflite.convert", str(saved_model), *SIDES[side],
            "--calibration_data", str(calib), "--num_calibration_samples", "64",
            "--output", str(out), "--noprogress", *FLAGS.eq_args]


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, last stdout line) of ``cmd`` as a whole process, measured by a wrapper."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t0 = time.perf_counter()\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "dt = time.perf_counter() - t0\n"
               "sys.stderr.write(r.stderr[-3000:]) if r.returncode else None\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "last = [l for l in r.stdout.splitlines() if l.strip()][-1:] or ['']\n"
               "print(r.returncode, dt, rss)\n"
               "print(last[0])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                          cwd=REPO, env=env)
    head, _, last = proc.stdout.partition("\n")
    code, seconds, rss = head.split()
    if int(code) != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    return float(seconds), float(rss), last.strip()


def _machine() -> str:
    sys.path.insert(0, str(REPO / "tools"))
    from bench_doc import machine
    return machine()


def main(argv: list[str]) -> None:
    del argv
    sys.path.insert(0, str(REPO))
    from benchmarks.real_models import default_cache_dir
    from eq_tflite.cli import fail
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    unknown = [s for s in FLAGS.sides if s not in SIDES]
    if unknown or "tflite" not in FLAGS.sides:
        return fail(f"--sides must include tflite and name only {', '.join(SIDES)}")
    missing = [m for m in FLAGS.models if not (cache / m / "saved_model").is_dir()]
    if missing:
        return fail(f"no SavedModel for {', '.join(missing)} in {cache}: run python -m benchmarks.real_models.build")
    sides = FLAGS.sides
    cmd_line = "python tools/benchmark_calibration.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    head = " | ".join(f"{LABELS[s]} s" + ("" if s == "tflite" else " (ratio)") for s in sides)
    rss_head = " | ".join(f"{LABELS[s]} MiB" + ("" if s == "tflite" else " (ratio)") for s in sides)
    lines = ["## Conversion time and memory on the real-model suite (issue 18)", "",
             f"Command: `{cmd_line}`", "", f"Machine: {_machine()} (shared with other jobs: "
             "only the ratios of sides timed alternately in the same run are meaningful).", "",
             "Each model converted from its SavedModel with the suite's 64 calibration samples, as "
             "whole processes (Python start, imports, load, calibrate, convert, write), alternating "
             f"between the sides, median of {FLAGS.runs}; ratio = side's median / TFLite's median. "
             "Peak RSS: the largest single process of a conversion (for eq-tflite the conversion "
             "child, or its TensorFlow stage worker, which ends before the method stage starts), "
             "max over the runs. eq-tflite runs TFLite's own int8 "
             "conversion inside (its int8 structure), so its time includes TFLite's.", "",
             f"| model | {head} | peak RSS: {rss_head} |",
             "|---|" + "---|" * (2 * len(sides))]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="eq_tflite_calibration_bench_") as tmp:
        for model in FLAGS.models:
            saved_model, calib = cache / model / "saved_model", cache / model / "calib.npy"
            times: dict[str, list[float]] = {s: [] for s in sides}
            rss: dict[str, list[float]] = {s: [] for s in sides}
            stages: dict[str, list[str]] = {s: [] for s in sides}
            for run in range(FLAGS.runs):
                for side in sides:
                    out = Path(tmp) / f"{model}_{side}_{run}.tflite"
                    s, r, last = measured(command(side, saved_model, calib, out))
                    out.unlink(missing_ok=True)
                    times[side].append(s)
                    rss[side].append(r)
                    stages[side].append(last)
                    print(model, side, f"run {run + 1}: {s:.1f} s, {r:.0f} MiB", last, flush=True)
            t0, r0 = statistics.median(times["tflite"]), max(rss["tflite"])
            cells = [f"{statistics.median(times[s]):.1f}" + ("" if s == "tflite" else
                     f" ({statistics.median(times[s]) / t0:.2f}x)") for s in sides]
            rcells = [f"{max(rss[s]):.0f}" + ("" if s == "tflite" else f" ({max(rss[s]) / r0:.2f}x)")
                      for s in sides]
            lines.append(f"| {model} | " + " | ".join(cells) + " | " + " | ".join(rcells) + " |")
            for side in sides:  # eq-tflite's own stage times, of its median run
                if SIDES[side] is not None:
                    order = sorted(range(FLAGS.runs), key=lambda i: times[side][i])
                    notes.append(f"- {model}, {LABELS[side]} (median run): {stages[side][order[len(order) // 2]]}")
            print(lines[-1], "runs:", {s: [round(t, 1) for t in v] for s, v in times.items()}, flush=True)
    text = "\n".join(lines + ["", "Stage seconds (eq-tflite's summary line):", ""] + notes) + "\n"
    print(text)
    if FLAGS.output:
        sys.path.insert(0, str(REPO / "tools"))
        from bench_doc import update_section
        update_section(FLAGS.output, "calibration", text)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
