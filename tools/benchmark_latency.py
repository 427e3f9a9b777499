"""End-to-end latency of the EasyQuant delegate against XNNPACK and TFLite's builtin kernels.

Each model runs under four backends in one process, interleaved round by
round (so they share machine noise), at each thread count of --threads:

  xnnpack             the default resolver (AUTO), i.e. XNNPACK alone
  default+delegate    the default resolver with the delegate (policy=fastest,
                      the default): what an app that keeps XNNPACK gets;
                      XNNPACK runs every node the delegate declines
  builtin+delegate    TFLite's builtin kernels with the delegate (policy=all):
                      every supported node in the delegate, bit-exact
  builtin             TFLite's own kernels (BUILTIN_WITHOUT_DEFAULT_DELEGATES)

Each measurement is --trials independent trials with fresh interpreters
(one instance's memory placement alone moved XNNPACK's median by up to 13%
on the shared development machine), each with --rounds interleaved invokes
in a new random order per round; a second XNNPACK instance ("xnnpack-2") is
timed alongside as the noise floor of the ratios.

The table reports medians and the ratios xnnpack / (default+delegate) (the
issue-19 acceptance: >= 1.0 means loading the delegate did not slow the
model down) and builtin / (builtin+delegate), whether builtin+delegate is
bit-exact with builtin, and what each delegate claimed.

Synthetic single-conv models (--cases) are built with TensorFlow's converter
from random float weights, then made 7-bit (weights in [-63, 63], inputs from
128 levels); the per-kernel view of these shapes is tools/benchmark_kernels.py.

    python tools/benchmark_latency.py --cases none --models a.tflite,b.tflite \
        --threads 1,2 --rounds 30 --output BENCHMARKS.md
    python tools/benchmark_latency.py --saved_models examples/resnet_fmnist \
        --calibration examples/fmnist_calib.npy

Synthetic models get random inputs; --models get random inputs on their input
grid; --saved_models are quantized at 7 bits with eq_tflite.quantize and fed
the first calibration sample.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any

import numpy as np
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # bench_models, bench_doc (also under runpy)
from bench_models import _inputs_for, build_conv_model  # noqa: E402

try:  # the installed package (pip install . builds the delegate into it)
    import eq_tflite  # noqa: F401
except ImportError:  # a plain checkout that was never installed: use it
    sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 20, "Timed invokes per backend and trial (median; >= 15).")
flags.DEFINE_integer("trials", 5, "Independent trials, each with fresh interpreters.")
flags.DEFINE_integer("warmup", 3, "Untimed invokes per backend first.")
flags.DEFINE_list("threads", ["1"], "Interpreter num_threads, one table row per value (e.g. 1,2).")
flags.DEFINE_integer("wbits", 7, "Weight bits of the synthetic models (7: [-63,63], 8: [-127,127]).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_list("cases", [], "Subset of the synthetic cases by name (default: all; "
                  "'none' for only --models / --saved_models).")
flags.DEFINE_list("models", [], "Extra .tflite models to time end to end.")
flags.DEFINE_list("saved_models", [], "SavedModel dirs to quantize with eq_tflite.quantize "
                  "(bits=7) and time end to end; needs --calibration.")
flags.DEFINE_string("calibration", "", ".npy calibration data for --saved_models.")
flags.DEFINE_string("quantize_method", "easyquant", "eq_tflite method for --saved_models.")
flags.DEFINE_list("delegate_options", [], "Delegate options as key=value.")
flags.DEFINE_bool("time_builtin", True, "Time the two builtin-resolver backends too. With "
                  "--notime_builtin they run once per trial, untimed, only for the "
                  "bit-exactness check (the builtin kernels take hundreds of ms per "
                  "invoke at 2 threads on big models).")
flags.DEFINE_string("section", "latency", "Name of the BENCHMARKS.md section --output writes.")
flags.DEFINE_string("output", "", "Write the report as the 'latency' section of this Markdown file (e.g. BENCHMARKS.md).")

# name: (H=W, Cin, Cout, kernel, stride); Cout == 0 means depthwise
CASES: dict[str, tuple[int, int, int, int, int]] = {
    "conv3x3_56x56x64": (56, 64, 64, 3, 1),
    "conv3x3_28x28x128": (28, 128, 128, 3, 1),
    "conv3x3_14x14x256": (14, 256, 256, 3, 1),
    "conv3x3_7x7x512": (7, 512, 512, 3, 1),
    "conv1x1_56x56x64": (56, 64, 64, 1, 1),
    "conv1x1_14x14x256": (14, 256, 256, 1, 1),
    "conv3x3s2_56x56x64": (56, 64, 64, 3, 2),
    "conv3x3s2_28x28x128": (28, 128, 128, 3, 2),
    "dwconv3x3_112x112x32": (112, 32, 0, 3, 1),
    "dwconv3x3_28x28x256": (28, 256, 0, 3, 1),
    "dwconv3x3s2_56x56x128": (56, 128, 0, 3, 2),
}


BACKENDS = ("xnnpack", "default+delegate", "builtin+delegate", "builtin", "xnnpack-2")


def _quantized_inputs(interp, rng: np.random.Generator,
                      inputs: list[np.ndarray] | None) -> list[np.ndarray]:
    if inputs is None:
        return _inputs_for(interp, rng)
    xs = []  # float samples; quantize them for integer model inputs
    for det, x in zip(interp.get_input_details(), inputs):
        if np.issubdtype(det["dtype"], np.integer) and det["quantization"][0] > 0:
            sc, zp = det["quantization"]
            info = np.iinfo(det["dtype"])
            x = np.clip(np.round(x / sc) + zp, info.min, info.max)
        xs.append(np.asarray(x).astype(det["dtype"]))
    return xs


def _trial(model: bytes, rng: np.random.Generator, delegate_options: dict[str, str],
           threads: int, inputs: list[np.ndarray] | None) -> dict[str, Any]:
    """Fresh interpreters (created in a random order), then interleaved rounds."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from eq_tflite.delegate import load_delegate

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    d_fast = load_delegate({"policy": "fastest", **delegate_options})
    d_all = load_delegate({**delegate_options, "policy": "all"})
    make = {
        "xnnpack": lambda: Interpreter(model_content=model, num_threads=threads),
        # the same configuration again: the noise floor of one instance
        "xnnpack-2": lambda: Interpreter(model_content=model, num_threads=threads),
        "default+delegate": lambda: Interpreter(model_content=model, num_threads=threads,
                                                experimental_delegates=[d_fast]),
        "builtin+delegate": lambda: Interpreter(model_content=model, num_threads=threads,
                                                experimental_delegates=[d_all],
                                                experimental_op_resolver_type=builtin),
        "builtin": lambda: Interpreter(model_content=model, num_threads=threads,
                                       experimental_op_resolver_type=builtin),
    }
    order = list(make)
    rng.shuffle(order)
    interps = {name: make[name]() for name in order}
    xs = None
    for name, it in interps.items():
        it.allocate_tensors()
        if xs is None:
            xs = _quantized_inputs(it, rng, inputs)
        for det, x in zip(it.get_input_details(), xs):
            it.set_tensor(det["index"], x)
        untimed = name.startswith("builtin") and not FLAGS.time_builtin
        for _ in range(1 if untimed else FLAGS.warmup):
            it.invoke()
    timed = [n for n in order if FLAGS.time_builtin or not n.startswith("builtin")]
    times: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(max(FLAGS.rounds, 15)):
        # Interleaved (shared machine noise), in a new random order each
        # round: a backend's thread pool still spinning after its invoke must
        # not always slow down the same next backend.
        rng.shuffle(timed)
        for name in timed:
            it = interps[name]
            t0 = time.perf_counter()
            it.invoke()
            times[name].append(time.perf_counter() - t0)

    def output(name: str) -> np.ndarray:
        it = interps[name]
        return it.get_tensor(it.get_output_details()[0]["index"])

    ms = {k: 1e3 * float(np.median(v)) if v else float("nan") for k, v in times.items()}
    for k in interps:
        ms.setdefault(k, float("nan"))  # untimed (--notime_builtin)
    def partitions(name: str) -> int:  # delegate kernels in the execution plan
        return sum(op["op_name"] == "DELEGATE" for op in interps[name]._get_ops_details())

    return {"ms": ms, "partitions": (partitions("xnnpack"), partitions("default+delegate")),
            "bitexact": bool(np.array_equal(output("builtin+delegate"), output("builtin"))),
            "fast": d_fast, "all": d_all}


def time_model(model: bytes, rng: np.random.Generator, delegate_options: dict[str, str],
               threads: int, inputs: list[np.ndarray] | None = None) -> dict[str, Any]:
    """--trials independent trials (fresh interpreters each: one instance's
    memory placement alone moved XNNPACK's median by up to 13% here); per
    backend the median of the trial medians, per ratio the median of the
    trials' ratios and its range."""
    from eq_tflite.delegate import delegate_stats

    trials = [_trial(model, rng, delegate_options, threads, inputs)
              for _ in range(max(FLAGS.trials, 1))]

    def ratio(a: str, b: str) -> list[float]:
        return [t["ms"][a] / t["ms"][b] for t in trials]

    accept = ratio("xnnpack", "default+delegate")
    fast, full = delegate_stats(trials[-1]["fast"]), delegate_stats(trials[-1]["all"])
    paths: dict[str, int] = {}
    for n in full["nodes"]:
        for p in n["paths"]:
            paths[p] = paths.get(p, 0) + 1
    return {
        "ms": {k: float(np.median([t["ms"][k] for t in trials])) for k in BACKENDS},
        "accept": float(np.median(accept)),
        "accept_range": (min(accept), max(accept)),
        "vs_builtin": (float(np.median(ratio("builtin", "builtin+delegate")))
                       if FLAGS.time_builtin else float("nan")),
        "control": float(np.median(ratio("xnnpack", "xnnpack-2"))),
        "control_range": (min(ratio("xnnpack", "xnnpack-2")), max(ratio("xnnpack", "xnnpack-2"))),
        "bitexact": all(t["bitexact"] for t in trials),
        "partitions": trials[-1]["partitions"],
        "claimed_fastest": f"{fast['claimed']}/{fast['considered']}",
        "claimed_fastest_kernels": sorted({n["kernel"] for n in fast["nodes"]}),
        "claimed_all": f"{full['claimed']}/{full['considered']}",
        "paths": ", ".join(f"{p}" + (f" x{c}" if c > 1 else "") for p, c in sorted(paths.items())),
        "isa": full["isa"],
        "cpu_class": full["cpu_class"],
    }


def cpu_info() -> tuple[str, str]:
    model, cores = platform.processor() or "unknown", str(os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            elif key.strip() == "CPU(s)":
                cores = val.strip()
    except OSError:
        pass
    return model, cores


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _labels(paths: list[str]) -> list[str]:
    """The shortest path tails that tell the models apart (the real-model
    suite names every model's files alike: <model>/runs/eq_w7a7.tflite)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    labels = []
    for p in parts:
        n = 1
        while n < len(p) and sum("/".join(q[-n:]) == "/".join(p[-n:]) for q in parts) > 1:
            n += 1
        labels.append("/".join(p[-n:]).replace("/runs/", "/"))
    return labels


def _ms(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.3f}"


def main(argv: list[str]) -> None:
    del argv
    load_before = _loadavg()
    rng = np.random.default_rng(FLAGS.seed)
    opts = dict(kv.split("=", 1) for kv in FLAGS.delegate_options)
    names = FLAGS.cases or list(CASES)
    if names == ["none"]:
        names = []
    unknown = [n for n in names if n not in CASES]
    if unknown:
        from eq_tflite.errors import EqTfliteError
        raise EqTfliteError(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
    threads = [int(t) for t in FLAGS.threads]
    jobs: list[tuple[str, bytes, list[np.ndarray] | None]] = []
    for name in names:
        h, cin, cout, k, s = CASES[name]
        kind = "depthwise " if cout == 0 else ""
        jobs.append((f"{name} ({kind}{k}x{k} s{s}, {h}x{h}x{cin}->{cout or cin})",
                     build_conv_model(h, cin, cout, k, s, FLAGS.wbits, rng), None))
    for path, label in zip(FLAGS.models, _labels(FLAGS.models)):
        with open(path, "rb") as f:
            jobs.append((label, f.read(), None))
    if FLAGS.saved_models:
        from eq_tflite import quantize
        calib = np.load(FLAGS.calibration).astype(np.float32)
        for path in FLAGS.saved_models:
            model = quantize(path, calib, bits=7, method=FLAGS.quantize_method)
            jobs.append((f"{os.path.basename(os.path.normpath(path))} "
                         f"(eq_tflite 7-bit, {FLAGS.quantize_method})", model, [calib[:1]]))
    rows = []
    for label, model, inputs in jobs:
        for t in threads:
            r = time_model(model, rng, opts, t, inputs=inputs)
            rows.append((label, t, r))
            print(label, t, r, flush=True)

    model_name, cores = cpu_info()
    cmd = "python " + " ".join(shlex.quote(a) for a in
                               [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    r0 = rows[0][2] if rows else {"isa": "?", "cpu_class": "?"}
    lines = [
        "# Delegate latency",
        "",
        f"CPU: {model_name}, {cores} CPU(s); CPU class `{r0['cpu_class']}`, delegate "
        f"kernels {r0['isa']}; {max(FLAGS.trials, 1)} trials, each with fresh interpreters "
        f"(created in a random order) and {max(FLAGS.rounds, 15)} invokes per backend, "
        "interleaved round by round in a new random order each round, in one process; ms = "
        "median of the trial medians; ratios = median of the trials' ratios [min-max].",
        "",
        f"Load average (1/5/15 min) before: {load_before}; after: {_loadavg()} "
        "(other processes share this machine: absolute times are noisy, the ratios "
        "less so because the backends are interleaved).",
        "",
        f"Command (from the repo root): `{cmd}`",
        "",
        "XNNPACK = default resolver alone; default+deleg. = default resolver with the "
        "delegate, `policy=fastest` (default); builtin+deleg. = builtin kernels with the "
        "delegate, `policy=all`. XNNPACK / (default+deleg.) >= 1 means loading the delegate "
        "did not slow the model down; XNNPACK / XNNPACK is a second XNNPACK instance timed "
        "alongside, the noise floor of these ratios. Delegate kernels = the DELEGATE nodes "
        "of each execution plan (XNNPACK partitions plus nodes the delegate claimed): "
        "where both are 1, the delegate claimed nothing and the default resolver runs "
        "exactly XNNPACK's graph, so its ratio is distributed like the control." + (
            "" if FLAGS.time_builtin else
            " The builtin backends were not timed (`--notime_builtin`, '-'): they ran "
            "once per trial for the bit-exactness check only."),
        "",
        "| model | threads | XNNPACK ms | default+deleg. ms | builtin+deleg. ms | builtin ms | "
        "XNNPACK / (default+deleg.) | XNNPACK / XNNPACK (control) | "
        "builtin / (builtin+deleg.) | builtin+deleg. bit-exact | "
        "claimed: fastest | delegate kernels: XNNPACK / default+deleg. | claimed: all | "
        "kernel paths (policy=all) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for label, t, r in rows:
        ms = r["ms"]
        kernels = ", ".join(r["claimed_fastest_kernels"])
        lines.append(
            f"| {label} | {t} | {_ms(ms['xnnpack'])} | {_ms(ms['default+delegate'])} | "
            f"{_ms(ms['builtin+delegate'])} | {_ms(ms['builtin'])} | "
            f"{r['accept']:.2f} [{r['accept_range'][0]:.2f}-{r['accept_range'][1]:.2f}] | "
            f"{r['control']:.2f} [{r['control_range'][0]:.2f}-{r['control_range'][1]:.2f}] | "
            f"{'-' if np.isnan(r['vs_builtin']) else format(r['vs_builtin'], '.2f')} | "
            f"{'yes' if r['bitexact'] else 'NO'} | {r['claimed_fastest']}"
            f"{f' ({kernels})' if kernels else ''} | "
            f"{r['partitions'][0]} / {r['partitions'][1]} | {r['claimed_all']} | {r['paths']} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if FLAGS.output:
        from bench_doc import update_section
        title = "## Delegate latency" + ("" if FLAGS.section == "latency" else f" ({FLAGS.section})")
        update_section(FLAGS.output, FLAGS.section, report.replace("# Delegate latency", title, 1))


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
