"""Architecture suite (issue 16): does every path convert what TFLite's int8 converter converts?

    python tools/benchmark_architectures.py [--models a,b] [--paths x,y] [--rerun]

For each model of ``benchmarks.architectures`` (built into the cache on first
use: random weights, small inputs, 32 seeded calibration samples) it runs
TFLite's own int8 conversion (``TFLITE_BUILTINS_INT8``, the samples as its
representative dataset) and every eq-tflite path, each as its own process
with the same command line TFLite needed (no ``--allow_float``), timing the
whole process (model loading included). A converted model is then checked
again with ``eq_tflite.verify`` and run on the 32 samples with LiteRT's
builtin kernels and with the delegate claiming every node it supports
(``policy=all``): the outputs must be identical. A failed conversion is
recorded as its one-line error. Results accumulate in
``benchmarks/architectures.json`` (a cell already there is skipped unless
``--rerun``) and the ``architectures`` section of BENCHMARKS.md is rewritten
after every cell.
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

from absl import flags  # noqa: E402

from benchmarks.architectures import ARCHITECTURES, NUM_SAMPLES, calibration_path, default_cache_dir  # noqa: E402
from benchmarks.architectures import input_range_flags  # noqa: E402

#: path key -> (label, eq-tflite flags; None marks the data-free path, which gets --input_range).
PATHS = {
    "default": ("default (EasyQuant, --bits 7)", ["--bits", "7"]),
    "minmax": ("--method minmax --bits 8", ["--method", "minmax", "--bits", "8"]),
    "bitsplit": ("--method bitsplit", ["--method", "bitsplit"]),
    "datafree": ("data-free (--input_range)", None),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("cache_dir", None, "Where the models are built (default: $EQ_TFLITE_ARCHITECTURES or "
                    "~/.cache/eq-tflite-architectures).")
flags.DEFINE_list("models", list(ARCHITECTURES), "Suite models to run.")
flags.DEFINE_list("paths", ["tflite_int8", *PATHS], "Paths to run (tflite_int8 is TFLite's own conversion).")
flags.DEFINE_bool("rerun", False, "Run cells that already have a result in the json.")
flags.DEFINE_integer("timeout", 1800, "Seconds before a conversion process is stopped (recorded as a failure).")
flags.DEFINE_bool("write_only", False, "Only rewrite the Markdown section from the results json; run nothing.")
flags.DEFINE_string("results", str(REPO / "benchmarks" / "architectures.json"), "Results json (read and updated).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file whose 'architectures' section is "
                    "rewritten.")

COMMAND = "python tools/benchmark_architectures.py"


def command(model: str, path: str, folder: Path, out: Path) -> list[str]:
    """The process that converts ``model`` along ``path`` into ``out``."""
    src = str(folder / "model.keras")
    if path == "tflite_int8":
        return [sys.executable, "-m", "benchmarks.architectures", "tflite_int8", model, str(folder), str(out)]
    extra = PATHS[path][1]
    base = [sys.executable, "-m", "eq_tflite.convert", src, "--output", str(out), "--noprogress"]
    if extra is None:
        return [*base, *input_range_flags(ARCHITECTURES[model])]
    return [*base, *extra, "--calibration_data", str(calibration_path(folder, ARCHITECTURES[model])),
            "--num_calibration_samples", str(NUM_SAMPLES)]


def error_line(stderr: str) -> str:
    """The process's last ``error:`` line (else its last line), at most 300 characters."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    line = (errors[-1] if errors else (lines[-1] if lines else "no output")).removeprefix("error:").strip()
    if "; error: " in line:  # a failed verification: its own error items say why, the rest is the report
        head, *items = line.split("; error: ")
        line = f"{head.split(';')[0]}: " + "; ".join(items)
    return line[:300]


def check_converted(model: bytes, folder: Path, arch) -> dict:
    """verify's verdict, and the delegate (policy=all) against the builtin kernels on ``samples``."""
    import numpy as np

    from eq_tflite import runtime
    from eq_tflite.delegate import delegate_stats, load_delegate
    from benchmarks.architectures import named_samples
    from eq_tflite.verify import verify
    report = verify(model)
    row = {"verify": "ok" if report.ok else "; ".join(report.errors)[:300]}
    builtin = runtime.make_interpreter(model, builtin_kernels=True)
    samples = named_samples(folder / "model.keras", arch, builtin.get_input_details())
    ref = runtime.run_model(builtin, samples)
    delegate = load_delegate({"policy": "all"})
    with_delegate = runtime.make_interpreter(model, builtin_kernels=True, delegates=[delegate])
    got = runtime.run_model(with_delegate, samples)
    row["delegate_mismatches"] = int(sum(np.count_nonzero(a != b) for a, b in zip(ref, got)))
    stats = delegate_stats(delegate)
    row["delegate_claimed"] = int(stats.get("claimed", 0))
    return row


def run_cell(model: str, path: str, cache: Path) -> dict:
    from benchmarks.architectures import build
    from bench_doc import fresh_output, run_in_repo, shown_command
    folder = build(model, cache)
    out = fresh_output(folder, path)
    cmd = command(model, path, folder, out)
    row = {"path": path, "command": shown_command(cmd, cache)}
    proc, seconds = run_in_repo(cmd, REPO, FLAGS.timeout)
    row["seconds"] = round(seconds, 2)
    ok = proc is not None and proc.returncode == 0 and out.exists()
    if proc is None:
        row["error"] = f"timeout after {FLAGS.timeout}s"
    elif not ok:
        row["error"] = error_line(proc.stderr)
    else:
        row["summary"] = [l for l in proc.stdout.splitlines() if l.strip()][-8:]
    if ok and path != "tflite_int8":
        try:
            row.update(check_converted(out.read_bytes(), folder, ARCHITECTURES[model]))
        except Exception as err:  # noqa: BLE001 - recorded in the table, never a crash
            from eq_tflite.errors import first_line
            row["check_error"] = f"{type(err).__name__}: {first_line(err)}"
    return row


def _cell(row: dict | None, tflite: dict | None) -> str:
    if row is None:
        return "not run"
    if "error" in row:
        return f"fails: `{row['error']}`"
    if "check_error" in row:
        return f"converts; check failed: `{row['check_error']}`"
    ratio = f"{row['seconds'] / tflite['seconds']:.1f}x" if tflite and "seconds" in tflite and \
        "error" not in tflite else f"{row['seconds']:.0f} s"
    verified = "verify ok" if row.get("verify") == "ok" else f"verify: {row.get('verify')}"
    exact = "bit-exact" if row.get("delegate_mismatches") == 0 else f"{row.get('delegate_mismatches')} mismatches"
    return f"{ratio}, {verified}, delegate {exact} ({row.get('delegate_claimed', 0)} nodes)"


def write_markdown(results: dict) -> None:
    from bench_doc import machine, update_section
    lines = ["## Architecture suite (issue 16)", "",
             f"Command: `{COMMAND}` (`--models`/`--paths` run a subset; results accumulate in "
             "`benchmarks/architectures.json`; models are built into `~/.cache/eq-tflite-architectures` "
             "by `benchmarks/architectures.py`).", "",
             f"Machine: {machine()}, shared with other jobs while this ran: times are indicative.", "",
             "Random weights (`weights=None`, seeded), small inputs, 32 seeded calibration samples inside "
             "each input's real range; the data-free path gets that range as `--input_range` and no data. "
             "Every path runs the `.keras` file with the same command line TFLite needed (no "
             "`--allow_float`). A cell: the conversion process's wall time as a multiple of TFLite's own "
             "int8 conversion of the same file (`TFLITE_BUILTINS_INT8`, same 32 samples, also a whole "
             "process), then `eq_tflite.verify` on the written file, then the delegate with `policy=all` "
             "against LiteRT's builtin kernels on the 32 samples (every output element compared; nodes: "
             "how many it claimed). A failure shows its one-line error; \"not run\": the cell has no "
             "result yet (the command above fills it in). Each time is one run, and a model's cells ran "
             "minutes apart under a changing load of other jobs, so the ratios are indicative only.", "",
             "| model | TFLite INT8 | " + " | ".join(label for label, _ in PATHS.values()) + " |",
             "|---|---|" + "---|" * len(PATHS)]
    totals = {p: [0, 0] for p in PATHS}
    for model in ARCHITECTURES:
        rows = results.get(model, {})
        tfl = rows.get("tflite_int8")
        tcell = "not run" if tfl is None else (f"fails: `{tfl['error']}`" if "error" in tfl
                                               else f"{tfl['seconds']:.1f} s")
        cells = []
        for p in PATHS:
            r = rows.get(p)
            cells.append(_cell(r, tfl))
            if r is not None:
                totals[p][1] += 1
                totals[p][0] += int("error" not in r and "check_error" not in r and r.get("verify") == "ok"
                                    and r.get("delegate_mismatches") == 0)
        kind = ARCHITECTURES[model].kind
        lines.append(f"| {model} ({kind}) | {tcell} | " + " | ".join(cells) + " |")
    lines += ["", "Converted, verified and bit-exact, per path: " +
              ", ".join(f"{PATHS[p][0]} {a} of {b}" for p, (a, b) in totals.items()) + "."]
    update_section(FLAGS.output, "architectures", "\n".join(lines))


def main(argv: list[str]) -> int:
    del argv
    from eq_tflite.cli import fail
    from eq_tflite.io.atomic import write_atomic
    cache = Path(FLAGS.cache_dir) if FLAGS.cache_dir else default_cache_dir()
    unknown = [p for p in FLAGS.paths if p not in ("tflite_int8", *PATHS)] + \
        [m for m in FLAGS.models if m not in ARCHITECTURES]
    if unknown:
        return fail(f"unknown model or path: {', '.join(unknown)}")
    results_path = Path(FLAGS.results)
    load = lambda: json.loads(results_path.read_text()) if results_path.exists() else {}  # noqa: E731
    if FLAGS.write_only:
        write_markdown(load())
        return 0
    for model in FLAGS.models:
        for path in FLAGS.paths:
            if path in load().get(model, {}) and not FLAGS.rerun:
                continue
            row = run_cell(model, path, cache)
            results = load()  # re-read: another run may have added rows meanwhile
            results.setdefault(model, {})[path] = row
            write_atomic(results_path, json.dumps(results, indent=1).encode())
            write_markdown(results)
            print(f"{model} | {path} | {row.get('seconds')} s | "
                  f"{_cell(row, results[model].get('tflite_int8')) if path != 'tflite_int8' else row.get('error', 'ok')}",
                  flush=True)
    return 0


if __name__ == "__main__":
    from eq_tflite.cli import run_absl
    run_absl(main)
