"""Runs one .tflite model with and without the delegate and compares the
outputs bit for bit; prints one JSON line.  Written to run inside the
aarch64 python under qemu (test_aarch64.py), but works anywhere:

    python arm_model_check.py MODEL.tflite INPUTS.npy [key=value ...]

INPUTS.npy holds float inputs (quantized here with the model's input
parameters when the input is int8).  The delegate library is the one
eq_tflite.delegate finds (EQ_TFLITE_DELEGATE_LIB overrides it).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

from eq_tflite.delegate import delegate_stats, load_delegate  # noqa: E402


def run(model: bytes, xs: np.ndarray, **kwargs) -> list[np.ndarray]:
    it = Interpreter(model_content=model, **kwargs)
    it.allocate_tensors()
    det = it.get_input_details()[0]
    outs = []
    for i in range(len(xs)):
        x = xs[i:i + 1]
        if det["dtype"] == np.int8:
            s, z = det["quantization"]
            x = np.clip(np.round(x / s) + z, -128, 127)
        it.set_tensor(det["index"], x.astype(det["dtype"]))
        it.invoke()
        outs.append(np.concatenate([it.get_tensor(o["index"]).ravel().astype(np.float64)
                                    for o in it.get_output_details()]))
    return outs


def main() -> int:
    model = open(sys.argv[1], "rb").read()
    xs = np.load(sys.argv[2]).astype(np.float32)
    opts = dict(a.split("=", 1) for a in sys.argv[3:])
    against = opts.pop("against", "builtin")
    opts.setdefault("policy", "all")  # test the kernels unless policy=fastest is asked for
    resolver = {"builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[against]
    ref = run(model, xs, experimental_op_resolver_type=resolver)
    d = load_delegate(opts)
    got = run(model, xs, experimental_delegates=[d],
              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    differ = sum(int(np.sum(a != b)) for a, b in zip(ref, got))
    total = sum(a.size for a in ref)
    print(json.dumps({"differ": differ, "total": total, "stats": delegate_stats(d)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
