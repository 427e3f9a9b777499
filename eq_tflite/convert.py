"""The CLI: ``python -m eq_tflite.convert SRC --bits 7 --calibration_data calib.npy``.

Writes a fully-integer .tflite (atomically), verifies it, and prints a short
summary. Exit codes: 0 ok, 2 bad input (one-line error, no output file).
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import time
from pathlib import Path

from eq_tflite.cli import Terminated, handle_termination, interrupted

if __name__ == "__main__":  # python -m: a signal during the imports below ends in one line too
    handle_termination()
try:  # absl, numpy and the methods: about half a second
    from absl import flags

    from eq_tflite import api, methods, mixed
    from eq_tflite.quiet import set_verbose
except (KeyboardInterrupt, Terminated) as _err:
    sys.exit(interrupted(_err))

FLAGS = flags.FLAGS
#: convert_model's defaults: a flag that is an API keyword takes its default from there.
_API = {name: p.default for name, p in inspect.signature(api.convert_model).parameters.items()}
flags.DEFINE_string("calibration_data", None,
                    ".npy (N, *input_shape), .npz (one array per input name) or an image directory.")
flags.DEFINE_string("output", None, "Output .tflite path (default: <SRC stem>_w<W>a<A>.tflite).")
flags.DEFINE_integer("bits", _API["bits"], "Weight and activation bit width (2..8).")
flags.DEFINE_integer("weight_bits", None, "Overrides --bits for weights.")
flags.DEFINE_integer("activation_bits", None, "Overrides --bits for activations.")
flags.DEFINE_enum("activation_range", _API["activation_range"], ["strict", "container"],
                  "strict: the b-bit levels are the activations' working range (default). "
                  "container: a b-bit step over an 8-bit range (values may use the int8 headroom); "
                  "labelled as such everywhere.")
flags.DEFINE_enum("method", None, methods.available(),
                  "Scale method. Default: easyquant with --calibration_data; without it the "
                  "data-free DFQ chain, which needs --input_range. "
                  + " ".join(f"{s.name}: {s.summary.rstrip('.')}{'' if s.needs_data else ' (no data)'}."
                             for s in methods.specs().values()))
flags.DEFINE_bool("cross_layer_equalization", None,
                  "Cross-layer equalization before any method (default: on for dfq, off otherwise).")
flags.DEFINE_bool("bias_absorption", None,
                  "DFQ bias absorption (needs BatchNorm statistics; default: with CLE under dfq).")
flags.DEFINE_enum("bias_correction", None, ["off", "empirical", "data_free"],
                  "Bias correction after any method (default: data_free for dfq, off otherwise). "
                  "empirical needs --calibration_data.")
flags.DEFINE_bool("per_tensor_weights", _API["per_tensor_weights"],
                  "One weight scale per tensor (accelerators and NNAPI drivers without "
                  "per-channel support).")
flags.DEFINE_multi_string("input_range", None,
                          "LO,HI: the real range of a model input (repeat once per input, in "
                          "order; one applies to all). Required without --calibration_data.")
flags.DEFINE_integer("num_calibration_samples", None,
                     "Cap on calibration samples (default: "
                     + ", ".join(f"{n} for {m}" for m, n in api.DEFAULT_SAMPLES.items())
                     + ", all for others, always holding back at least 1/8 of the data, 4-32 "
                     "samples). Samples beyond it (up to 256) are held back for the agreement "
                     "check; a value that takes every sample makes that check optimistic.")
flags.DEFINE_list("image_size", None, "H,W for an image-directory calibration set (default: model's).")
flags.DEFINE_list("mean", [f"{v:g}" for v in _API["mean"]], "Per-channel mean subtracted from images scaled to [0, 1].")
flags.DEFINE_list("std", [f"{v:g}" for v in _API["std"]], "Per-channel std dividing images scaled to [0, 1].")
flags.DEFINE_bool("allow_float", _API["allow_float"], "Keep ops without int8 kernels in float instead of failing.")
flags.DEFINE_bool("int8_io", _API["int8_io"], "Make model inputs/outputs int8 (default: float32 I/O).")
flags.DEFINE_string("report_dir", None, "Write a per-layer report (Markdown, CSV, PNG) here.")
flags.DEFINE_bool("pack_int4", _API["pack_int4"],
                  "Store CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED weights as packed INT4 (needs "
                  "--weight_bits <= 4 and a runtime with INT4 kernels, e.g. LiteRT 2.x); default: "
                  "the int8 container any TFLite runtime reads.")
flags.DEFINE_multi_string("layer_bits", None,
                          "NAME_REGEX=W[/A]: weights of the layers whose Keras name matches at W "
                          "bits (and their input/output activations at A); repeatable, later wins. "
                          "The summary and --report_dir list the layer names.")
flags.DEFINE_list("keep_8bit", None,
                  "Keep at 8 bits: input (the model inputs), first / last (the first / last "
                  "weighted layers: weights, inputs and outputs), comma-separated.")
flags.DEFINE_float("weight_size", None,
                   "Weight budget in KiB: the search stores the least sensitive layers' weights "
                   "as 4-bit packed INT4 until the weights fit (others keep --weight_bits).")
flags.DEFINE_multi_string("output_range", None,
                          "NAME=LO,HI: quantize model output NAME (signature or tensor name) over [LO, HI] "
                          "instead of its calibrated range, e.g. a detector's score logits "
                          "(repeatable; see eq_tflite/output_ranges.py).")
flags.DEFINE_float("weight_size_ratio", None,
                   "Weight budget as a share of the int8 weights (e.g. 0.6); see --weight_size.")
flags.DEFINE_enum("budget_sensitivity", _API["budget_sensitivity"], list(mixed.MEASURES),
                  "What the weight-budget search ranks layers by: output (the model outputs' noise "
                  "with that layer alone at 4 bits, nearest-rounded), output_gptq (the same with "
                  "the 4 bits GPTQ-rounded as EasyQuant ships them) or layer (the layer's own "
                  "output cosine).")
flags.DEFINE_integer("seed", _API["seed"], "Seed for sampling calibration rows (EasyQuant, Bit-Split).")
flags.DEFINE_bool("progress", True, "Show progress bars (the API's default is off).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's own logs.")

#: Flags passed to ``api.convert_model`` as the keyword of the same name, unchanged.
API_FLAGS = ("bits", "weight_bits", "activation_bits", "activation_range", "method",
             "num_calibration_samples", "allow_float", "int8_io", "progress", "seed", "pack_int4",
             "cross_layer_equalization", "bias_absorption", "bias_correction",
             "per_tensor_weights", "input_range", "layer_bits", "keep_8bit", "weight_size",
             "weight_size_ratio", "output_range", "budget_sensitivity")


def _define_option_flags() -> tuple[str, ...]:
    """One flag per chain and method option (``eq_tflite.options``); returns their names.

    Every flag defaults to None (unset): the default lives in the options
    dataclass alone, and its help text states it.
    """
    from eq_tflite import options
    from eq_tflite.chain import option_owners
    names = []
    for owner, cls, prefix in option_owners():
        for key, f in options.keys(cls, prefix).items():
            if key in names or key == "seed":  # seed: the general --seed flag
                continue
            kind, text = options.kind(cls, f), options.help_text(f, owner)
            if f.metadata["choices"]:
                flags.DEFINE_enum(key, None, [str(c) for c in f.metadata["choices"]], text)
            else:
                define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                          float: flags.DEFINE_float, tuple: flags.DEFINE_list}.get(
                              kind, flags.DEFINE_string)
                define(key, None, text)
            names.append(key)
    return tuple(names)


_OPTION_FLAGS = _define_option_flags()


def _method_options() -> dict:
    return {name: FLAGS[name].value for name in _OPTION_FLAGS if FLAGS[name].value is not None}


def _floats(values: list[str], name: str) -> tuple[float, ...]:
    from eq_tflite.errors import EqTfliteError
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise EqTfliteError(f"--{name} must be comma-separated numbers, got {','.join(values)}") from None
    if not all(math.isfinite(v) for v in out):
        raise EqTfliteError(f"--{name} must be finite numbers, got {','.join(values)}")
    return out


def _image_size() -> tuple[int, int] | None:
    from eq_tflite.errors import EqTfliteError
    if not FLAGS.image_size:
        return None
    try:
        size = tuple(int(v) for v in FLAGS.image_size)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise EqTfliteError(f"--image_size must be two positive integers H,W, got {','.join(FLAGS.image_size)}")
    return size  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    """Converts argv[1]; returns the process exit code (every failure: one error line, 2)."""
    from eq_tflite.cli import guarded

    if len(argv) != 2:
        print(usage() + "  (--help for the flags)", file=sys.stderr)
        return 2
    return guarded(lambda: _convert(argv[1]))


def usage() -> str:
    """The usage line, naming the program as it was started."""
    program = "eq-tflite" if os.path.basename(sys.argv[0]).startswith("eq-tflite") \
        else "python -m eq_tflite.convert"
    return (f"usage: {program} SRC [--bits 7] [--calibration_data DATA] [--output OUT.tflite] "
            "[flags]\n  SRC: a SavedModel directory, a Keras .keras/.h5 file or a float .tflite")


def _convert(src: str) -> int:
    from eq_tflite.errors import EqTfliteError
    from eq_tflite.io.atomic import write_atomic
    from eq_tflite.io.file_safety import check_output_path
    from eq_tflite.isolation import run_isolated

    start = time.perf_counter()
    from eq_tflite.io.sources import source_kind
    source_kind(src)  # a missing or unsupported model first, before any check of the output
    bits = api.resolve_bits(FLAGS.bits, FLAGS.weight_bits, FLAGS.activation_bits,
                            FLAGS.activation_range)
    image_size = _image_size()
    mean, std = _floats(FLAGS.mean, "mean"), _floats(FLAGS.std, "std")
    # Every check on the output happens before the (long) conversion starts.
    output = check_output_path(
        FLAGS.output if FLAGS.output is not None
        else f"{Path(src).with_suffix('').name or 'model'}_w{bits.weights}a{bits.activations}.tflite",
        inputs=(src, FLAGS.calibration_data))
    if FLAGS.report_dir is not None:
        _check_report_dir(Path(FLAGS.report_dir), inputs=(src, FLAGS.calibration_data))
    # The pipeline runs in a child process, so a native crash anywhere in it (e.g. LiteRT
    # aborting on the rewritten model of a hostile float model) is one error line too. If
    # TensorFlow already ran here (in-process callers, tests), the model is loaded first,
    # here: TF's SavedModel loader can deadlock in a forked child (see io.sources).
    load_seconds, model, load_notes = 0.0, src, []
    if "tensorflow" in sys.modules:
        t0 = time.perf_counter()
        model = api.float_model_of(src, load_notes)
        load_seconds = time.perf_counter() - t0
    result = run_isolated(
        api.convert_model, model, FLAGS.calibration_data, what="the conversion",
        method_options=_method_options(), image_size=image_size, mean=mean, std=std,
        **{name: FLAGS[name].value for name in API_FLAGS})
    result.timings["load"] = result.timings.get("load", 0.0) + load_seconds
    result.load_notes[:0] = load_notes
    # The model is the product: it is written first, and a report that cannot be
    # written (a full disk) is a warning, never a reason to discard the model.
    write_atomic(output, result.model)
    _print_summary(result, output, time.perf_counter() - start)
    if FLAGS.report_dir:
        from eq_tflite.report import write_conversion_report
        try:
            write_conversion_report(result, FLAGS.report_dir)
        except (EqTfliteError, OSError) as err:
            reason = err.strerror if isinstance(err, OSError) else str(err)
            print(f"warning: no report written to {FLAGS.report_dir} ({reason}); "
                  f"the model {output} was written", file=sys.stderr)
    return 0


def _check_report_dir(path: Path, inputs: tuple) -> None:
    from eq_tflite.errors import EqTfliteError
    from eq_tflite.io.file_safety import check_not_inputs
    if str(path) == "":
        raise EqTfliteError("empty --report_dir")
    for name in ("layers.md", "layers.csv", "layers.png"):
        check_not_inputs(path / name, inputs, "--report_dir file")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise EqTfliteError(f"--report_dir {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EqTfliteError(f"--report_dir {path}: {probe} is not writable")


def _print_summary(result, output: Path, seconds: float) -> None:
    rep = result.report
    held = (f"the {rep.samples} calibration samples (optimistic: the method fitted these; "
            "leave --num_calibration_samples unset, or give more data, to hold some back)"
            if result.holdout_is_calibration
            else f"{rep.samples} held-back samples (after the {result.num_calibration} "
            "calibration samples)")
    print(f"wrote {output} ({len(result.model) / 1024:.1f} KiB) in {seconds:.1f}s")
    print(f"  chain {' -> '.join(result.plan.steps)}, {rep.bits.label}"
          + (", per-tensor weights" if result.plan.per_tensor_weights else "")
          + (f", {result.num_calibration} calibration samples" if result.num_calibration
             else ", no data (data-free)")
          + f", {rep.quantized_ops} int8 ops"
          + (f", float ops kept: {', '.join(sorted(set(rep.float_ops)))}" if rep.float_ops else ""))
    if result.int4_tensors:
        print(f"  {result.int4_tensors} weight tensors stored as packed INT4 "
              "(same outputs as the int8 container, checked)")
    if result.plan.bits.mixed or result.int4_tensors:
        print(f"  weights {result.weight_bytes / 1024:.1f} KiB "
              f"({result.weight_bytes / max(result.int8_weight_bytes, 1):.2f} of int8's "
              f"{result.int8_weight_bytes / 1024:.1f} KiB)")
    for note in result.load_notes + result.plan.notes:
        print(f"  {note}")
    if rep.cosine is None and not result.num_calibration:
        print("  no data: agreement with float not measured (pass --calibration_data or run "
              "python -m eq_tflite.verify MODEL --float_model SRC --data x.npy)")
    if rep.cosine is not None:
        print(f"  vs float on {held}: output cosine {rep.cosine:.5f}, "
              f"top-1 agreement {100 * rep.agreement:.2f}%")
    if rep.levels is not None:
        print(f"  {rep.levels.summary()}")
    for warning in rep.warnings:
        print(f"  warning: {warning}")
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"  time: {times}")


def run() -> None:
    """Runs the CLI on ``sys.argv`` (``eq-tflite`` starts at ``cli.eq_tflite_main``)."""
    from eq_tflite.cli import run_absl
    handle_termination()  # a SIGTERM from here on ends in one error line

    set_verbose("--verbose" in sys.argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    # absl's --help lists the key flags of the module named by argv[0]; register
    # ours there so `eq-tflite --help` and `python -m eq_tflite.convert --help` show them.
    module = __name__ if __name__ != "__main__" else sys.argv[0]
    for flag in FLAGS.flags_by_module_dict().get(module, []):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    run_absl(main, usage())


if __name__ == "__main__":
    try:
        run()
    except (KeyboardInterrupt, Terminated) as _err:  # before run_absl's own handlers
        sys.exit(interrupted(_err))
