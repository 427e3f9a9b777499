"""Per-kernel benchmark of the delegate against XNNPACK; writes the claim policy's cost table.

XNNPACK style: one single-layer int8 model per realistic layer shape
(ResNet-18 3x3 stages, MobileNetV2 / EfficientNet-Lite0 pointwise, depthwise
3x3 and 5x5, stride 1 and 2, the stem), 7-bit weights and inputs drawn from
128 levels (what eq-tflite writes).  For each layer and thread count, every
kernel variant the delegate has for it (Winograd and direct for a 3x3
stride-1 convolution; direct; depthwise) runs under the builtin resolver with
``policy=all``, side by side with XNNPACK (the default resolver) on the same
model, interleaved round by round (random order per round) in one process; the speedup is XNNPACK's
median time over the variant's.

The rows of this machine's CPU class (``cpu_class`` in ``delegate_stats``:
avx512vnni, avx2, neon-dotprod, neon) replace that class's rows of the
generated table ``delegates/src/claim_table.h``; other classes' rows are
kept.  Rebuild the delegate afterwards (``pip install -e .`` or
``python setup.py build_ext --inplace``).

    python tools/benchmark_kernels.py --table delegates/src/claim_table.h --output BENCHMARKS.md
    python tools/benchmark_kernels.py --layers conv3x3_56x56x64 --threads 1   # just print
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
import time

import numpy as np
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:
    import eq_tflite  # noqa: F401
except ImportError:
    sys.path.insert(0, REPO)

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 100, "Timed invokes per backend and thread count (median).")
flags.DEFINE_integer("warmup", 5, "Untimed invokes per backend first.")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts (the table holds 1 and 2).")
flags.DEFINE_list("layers", [], "Subset of the layers by name (default: all).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("table", "", "Write the cost table (C header), e.g. delegates/src/claim_table.h.")
flags.DEFINE_string("output", "", "Write the 'kernels' section of this Markdown file.")
flags.DEFINE_string("section", "kernels", "Name of the BENCHMARKS.md section --output writes "
                    "(another name for a subset of --layers, so the full table stays).")

# name: (H=W, Cin, Cout, kernel, stride); Cout == 0: depthwise (multiplier 1).
LAYERS: dict[str, tuple[int, int, int, int, int]] = {
    # ResNet-18 3x3 stages, stride 1 and the stride-2 entries
    "conv3x3_56x56x64": (56, 64, 64, 3, 1),
    "conv3x3_28x28x128": (28, 128, 128, 3, 1),
    "conv3x3_14x14x256": (14, 256, 256, 3, 1),
    "conv3x3_7x7x512": (7, 512, 512, 3, 1),
    "conv3x3s2_56x56x64to128": (56, 64, 128, 3, 2),
    "conv3x3s2_28x28x128to256": (28, 128, 256, 3, 2),
    # small 3x3 stages (the fashion-MNIST examples' scale)
    "conv3x3_28x28x16": (28, 16, 16, 3, 1),
    "conv3x3_14x14x32": (14, 32, 32, 3, 1),
    # stems: MobileNetV2 / EfficientNet-Lite0 at 224x224
    "conv3x3s2_224x224x3to32": (224, 3, 32, 3, 2),
    # pointwise (MobileNetV2 / EfficientNet-Lite0 expand and project)
    "conv1x1_112x112x32to16": (112, 32, 16, 1, 1),
    "conv1x1_56x56x24to144": (56, 24, 144, 1, 1),
    "conv1x1_56x56x144to24": (56, 144, 24, 1, 1),
    "conv1x1_28x28x32to192": (28, 32, 192, 1, 1),
    "conv1x1_14x14x64to384": (14, 64, 384, 1, 1),
    "conv1x1_14x14x384to64": (14, 384, 64, 1, 1),
    "conv1x1_7x7x160to960": (7, 160, 960, 1, 1),
    "conv1x1_7x7x320to1280": (7, 320, 1280, 1, 1),
    "conv1x1_14x14x16to64": (14, 16, 64, 1, 1),
    # depthwise 3x3
    "dw3x3_112x112x32": (112, 32, 0, 3, 1),
    "dw3x3_56x56x144": (56, 144, 0, 3, 1),
    "dw3x3_28x28x192": (28, 192, 0, 3, 1),
    "dw3x3_14x14x384": (14, 384, 0, 3, 1),
    "dw3x3_7x7x960": (7, 960, 0, 3, 1),
    "dw3x3_14x14x64": (14, 64, 0, 3, 1),
    "dw3x3s2_112x112x96": (112, 96, 0, 3, 2),
    "dw3x3s2_56x56x144": (56, 144, 0, 3, 2),
    "dw3x3s2_28x28x64": (28, 64, 0, 3, 2),
    # depthwise 5x5 (EfficientNet-Lite0)
    "dw5x5_28x28x240": (28, 240, 0, 5, 1),
    "dw5x5_14x14x672": (14, 672, 0, 5, 1),
    "dw5x5_7x7x1152": (7, 1152, 0, 5, 1),
    "dw5x5s2_56x56x144": (56, 144, 0, 5, 2),
    "dw5x5s2_14x14x672": (14, 672, 0, 5, 2),
}

ROW_RE = re.compile(
    r'\{"(?P<cls>[^"]+)", "(?P<kernel>[^"]+)", (?P<k>\d+), (?P<s>\d+), (?P<h>\d+), '
    r'(?P<cin>\d+), (?P<cout>\d+), (?P<wbits>\d+), \{(?P<s1>[\d.]+)f, (?P<s2>[\d.]+)f\}, '
    r'"(?P<layer>[^"]+)"\}')


def variants(cin: int, cout: int, k: int, stride: int) -> list[tuple[str, dict[str, str]]]:
    """The delegate's kernel variants for a layer: (label, options)."""
    if cout == 0:
        return [("depthwise", {})]
    if k == 3 and stride == 1 and cin >= 8 and cout >= 8:
        return [("winograd", {"winograd": "1"}), ("direct", {"winograd": "0"})]
    return [("direct", {})]


def time_layer(model: bytes, threads: int, rng: np.random.Generator,
               opts: list[tuple[str, dict[str, str]]]) -> dict[str, dict]:
    """Median ms of XNNPACK and of each delegate variant, interleaved."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from bench_models import _inputs_for
    from eq_tflite.delegate import delegate_stats, load_delegate

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interps: dict[str, object] = {"xnnpack": Interpreter(model_content=model, num_threads=threads)}
    delegates = {}
    for label, o in opts:
        d = load_delegate({"policy": "all", **o})
        delegates[label] = d
        interps[label] = Interpreter(model_content=model, num_threads=threads,
                                     experimental_delegates=[d],
                                     experimental_op_resolver_type=builtin)
    first = interps["xnnpack"]
    first.allocate_tensors()
    xs = _inputs_for(first, rng)
    for it in interps.values():
        it.allocate_tensors()
        for det, x in zip(it.get_input_details(), xs):
            it.set_tensor(det["index"], x)
        for _ in range(FLAGS.warmup):
            it.invoke()
    times: dict[str, list[float]] = {k: [] for k in interps}
    order = list(interps)
    for _ in range(FLAGS.rounds):
        rng.shuffle(order)  # a new order each round (thread pools still spinning)
        for name in order:
            it = interps[name]
            t0 = time.perf_counter()
            it.invoke()
            times[name].append(time.perf_counter() - t0)
    out = {"xnnpack": {"ms": 1e3 * float(np.median(times["xnnpack"]))}}
    for label, d in delegates.items():
        st = delegate_stats(d)
        if st["claimed"] != 1:
            raise RuntimeError(f"the delegate did not claim the layer ({label}): {st}")
        node = st["nodes"][0]
        out[label] = {"ms": 1e3 * float(np.median(times[label])), "kernel": node["kernel"],
                      "paths": ",".join(node["paths"]), "cpu_class": st["cpu_class"]}
    return out


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [m.groupdict() for m in ROW_RE.finditer(f.read())]


def write_table(path: str, rows: list[dict], cpu_class: str, header: str) -> None:
    """Replaces cpu_class's rows of the generated header, keeps the others."""
    kept = [r for r in read_rows(path) if r["cls"] != cpu_class]
    lines = [
        "/* Generated by tools/benchmark_kernels.py; do not edit by hand.",
        " * Regenerate (per CPU class, other classes' rows are kept):",
        " *   python tools/benchmark_kernels.py --table delegates/src/claim_table.h "
        "--output BENCHMARKS.md",
        f" * Rows of {cpu_class}: {header}",
        " * Columns: CPU class, kernel, k, stride, H=W, cin, cout, weight bits,",
        " * {XNNPACK ms / kernel ms at 1 thread, at 2 threads}, layer.",
        " * Row type: eqd_cost_table.h; used by claim_policy.c. */",
        "static const eqd_cost_row eqd_cost_table[] = {",
    ]
    for r in kept + rows:
        lines.append(f'    {{"{r["cls"]}", "{r["kernel"]}", {r["k"]}, {r["s"]}, {r["h"]}, '
                     f'{r["cin"]}, {r["cout"]}, {r["wbits"]}, {{{float(r["s1"]):.3f}f, '
                     f'{float(r["s2"]):.3f}f}}, "{r["layer"]}"}},')
    lines += ["    {NULL, NULL, 0, 0, 0, 0, 0, 0, {0.0f, 0.0f}, NULL} /* end */", "};", ""]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    del argv
    from bench_doc import machine, update_section
    from eq_tflite.errors import EqTfliteError
    from bench_models import build_conv_model

    names = FLAGS.layers or list(LAYERS)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise EqTfliteError(f"unknown layer(s) {unknown}; choose from {sorted(LAYERS)}")
    threads = [int(t) for t in FLAGS.threads]
    if FLAGS.table and sorted(threads) != [1, 2]:
        raise EqTfliteError("--table needs --threads 1,2 (the table's two columns)")
    rng = np.random.default_rng(FLAGS.seed)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = []  # (name, variant label, kernel, paths, {threads: (xnn ms, ms)})
    cpu_class = "?"
    for name in names:
        h, cin, cout, k, s = LAYERS[name]
        model = build_conv_model(h, cin, cout, k, s, 7, rng)
        per: dict[str, dict] = {}
        for t in threads:
            r = time_layer(model, t, rng, variants(cin, cout, k, s))
            for label, v in r.items():
                if label == "xnnpack":
                    continue
                cpu_class = v["cpu_class"]
                e = per.setdefault(label, {"kernel": v["kernel"], "paths": v["paths"], "t": {}})
                e["t"][t] = (r["xnnpack"]["ms"], v["ms"])
        for label, e in per.items():
            results.append((name, label, e["kernel"], e["paths"], e["t"]))
            print(name, label, e["kernel"], {t: f"xnn {a:.3f} ms, kernel {b:.3f} ms, {a / b:.2f}x"
                                             for t, (a, b) in e["t"].items()}, flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import ai_edge_litert
    conditions = (f"{machine()}; LiteRT {getattr(ai_edge_litert, '__version__', '?')}; "
                  f"median of {FLAGS.rounds} invokes per backend, interleaved in a random order per round in one process; "
                  f"load average before {load_before}, after {load_after}; "
                  f"{datetime.date.today().isoformat()}.")
    if FLAGS.table:
        rows = []
        for name, _label, kernel, _paths, t in results:
            h, cin, cout, k, s = LAYERS[name]
            rows.append({"cls": cpu_class, "kernel": kernel, "k": k, "s": s, "h": h, "cin": cin,
                         "cout": cout or cin, "wbits": 7, "s1": t[1][0] / t[1][1],
                         "s2": t[2][0] / t[2][1], "layer": name})
        write_table(FLAGS.table, rows, cpu_class, conditions)
    cmd = "python " + " ".join(shlex.quote(a) for a in
                               [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    lines = [
        "## Delegate kernels vs XNNPACK, per layer (the claim policy's cost table)"
        if FLAGS.section == "kernels" else f"## Delegate kernels vs XNNPACK ({FLAGS.section})",
        "",
        f"CPU class `{cpu_class}`: {conditions}",
        "",
        "Each row is one single-layer int8 model (7-bit weights, inputs from 128 levels): "
        "the delegate's variant (builtin resolver, `policy=all`) against XNNPACK (default "
        "resolver) on the same model. Speedup = XNNPACK ms / variant ms (> 1: the variant "
        "is faster). `policy=fastest` claims a node only where its nearest row of the same "
        "CPU class, kernel, kernel size and stride reaches 1.05x.",
        "",
        f"Command (from the repo root): `{cmd}`",
        "",
        "| layer | variant (kernel, path) | " + " | ".join(
            f"XNNPACK ms ({t}T) | variant ms ({t}T) | speedup ({t}T)" for t in threads) + " |",
        "|---|---|" + "---:|---:|---:|" * len(threads),
    ]
    for name, _label, kernel, paths, t in results:
        cells = " | ".join(f"{t[n][0]:.3f} | {t[n][1]:.3f} | {t[n][0] / t[n][1]:.2f}"
                           for n in threads)
        lines.append(f"| {name} | {kernel} ({paths}) | {cells} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if FLAGS.output:
        update_section(FLAGS.output, FLAGS.section, report)


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
