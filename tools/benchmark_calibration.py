"""Calibration time and memory on 224x224 models: eq-tflite against TFLite's own int8 conversion.

    python tools/benchmark_calibration.py [--runs 3] [--depths full,block_6] [--output BENCHMARKS.md]

Builds (once, cached in --work_dir) a Keras MobileNetV2 (alpha 1.0, 224x224,
``weights=None``) whose BatchNorm layers get realistic statistics from a few
training steps on random data, exported as a SavedModel, and 64 random
calibration images. ``--depths`` adds a truncated copy (up to a named block)
to show how peak memory depends on depth. Random weights are fine for timing,
not for accuracy.

Both sides run as whole processes (start, imports, load, calibrate, convert,
write), alternating, ``--runs`` times each; medians are reported with the peak
RSS of each process (``resource.getrusage`` of the children):

* TFLite: ``TFLiteConverter.from_saved_model`` + representative dataset
  (50 samples), ``TFLITE_BUILTINS_INT8``;
* eq-tflite: ``python -m eq_tflite.convert MODEL --bits 7 --calibration_data
  x.npy`` (EasyQuant, 50 of the 64 samples; the rest are held back for verify).
"""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 3, "Whole-process runs per side (median).")
flags.DEFINE_list("depths", ["full", "block_6_project_BN"],
                  "'full' and/or names of the MobileNetV2 layer to truncate at.")
flags.DEFINE_integer("samples", 64, "Random calibration images written to the data file.")
flags.DEFINE_string("work_dir", "/tmp/eq_tflite_calibration_bench", "Cache for models and data.")
flags.DEFINE_string("output", None, "Markdown file whose 'calibration' section is rewritten.")
flags.DEFINE_list("eq_args", [], "Extra eq-tflite flags, e.g. --eq_objective=linear.")

_TFLITE_SCRIPT = """
import sys, numpy as np, tensorflow as tf
x = np.load(sys.argv[2])[:50]
c = tf.lite.TFLiteConverter.from_saved_model(sys.argv[1])
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
open(sys.argv[3], "wb").write(c.convert())
"""


def build_model(depth: str, work: Path) -> Path:
    """SavedModel of MobileNetV2 (full or truncated at ``depth``) with trained BN statistics."""
    out = work / f"mobilenetv2_{depth}"
    if (out / "saved_model.pb").exists():
        return out
    import keras
    import numpy as np
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=1000)
    if depth != "full":
        x = keras.layers.GlobalAveragePooling2D()(base.get_layer(depth).output)
        base = keras.Model(base.input, keras.layers.Dense(1000, activation="softmax")(x))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (64, 224, 224, 3)).astype(np.float32)
    y = rng.integers(0, 1000, 64)
    base.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")
    base.fit(x, y, batch_size=16, epochs=2, verbose=0)  # BN moving statistics become realistic
    base.export(str(out), verbose=False)
    return out


def calibration_file(work: Path, n: int) -> Path:
    path = work / f"calib_{n}.npy"
    if not path.exists():
        import numpy as np
        np.save(path, np.random.default_rng(1).uniform(-1, 1, (n, 224, 224, 3)).astype(np.float32))
    return path


def measured(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``cmd`` as a whole process, measured by a wrapper process."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t0 = time.perf_counter()\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "dt = time.perf_counter() - t0\n"
               "sys.stderr.write(r.stderr[-3000:]) if r.returncode else None\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(r.returncode, dt, rss)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    code, seconds, rss = proc.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    return float(seconds), float(rss)


def _machine() -> str:
    from bench_doc import machine
    return machine()


def main(argv: list[str]) -> None:
    del argv
    work = Path(FLAGS.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = calibration_file(work, FLAGS.samples)
    cmd_line = "python tools/benchmark_calibration.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    lines = ["## Calibration time at 224x224", "",
             f"Command: `{cmd_line}`", "", f"Machine: {_machine()}", "",
             "MobileNetV2 (Keras applications, 224x224, random weights with trained BatchNorm "
             "statistics), 64 random calibration images. Whole processes (Python start, imports, "
             f"load, calibrate, convert, write), alternating, median of {FLAGS.runs}; peak RSS per "
             "process. TFLite: its own int8 conversion with 50 representative samples. eq-tflite: "
             "`python -m eq_tflite.convert MODEL --bits 7 --calibration_data x.npy "
             + " ".join(FLAGS.eq_args) + "` (EasyQuant, 50 samples).", "",
             "| model | TFLite s | eq-tflite s | ratio | TFLite peak RSS MiB | eq-tflite peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for depth in FLAGS.depths:
        model = build_model(depth, work)
        out = work / "out.tflite"
        tfl = [sys.executable, "-c", _TFLITE_SCRIPT, str(model), str(data), str(out)]
        eq = [sys.executable, "-m", "eq_tflite.convert", str(model), "--bits", "7",
              "--calibration_data", str(data), "--output", str(out), "--noprogress", *FLAGS.eq_args]
        times: dict[str, list[float]] = {"tflite": [], "eq": []}
        rss: dict[str, list[float]] = {"tflite": [], "eq": []}
        for _ in range(FLAGS.runs):
            for name, cmd in (("tflite", tfl), ("eq", eq)):
                s, r = measured(cmd)
                times[name].append(s)
                rss[name].append(r)
                print(depth, name, f"{s:.1f}s", f"{r:.0f} MiB", flush=True)
        t, e = statistics.median(times["tflite"]), statistics.median(times["eq"])
        lines.append(f"| mobilenetv2 ({depth}) | {t:.1f} | {e:.1f} | {e / t:.2f}x | "
                     f"{max(rss['tflite']):.0f} | {max(rss['eq']):.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.output:
        sys.path.insert(0, str(REPO / "tools"))
        from bench_doc import update_section
        update_section(FLAGS.output, "calibration", text)


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
