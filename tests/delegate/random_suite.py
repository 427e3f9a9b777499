"""Randomized bit-exactness suite: the delegate against TFLite's own kernels.

Used by test_bitexact.py and, as a script, by the sanitizer test (which runs
it in a subprocess against an ASan/UBSan build of the library):

    python tests/delegate/random_suite.py --cases 40 --seed 1 --options isa=avx2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402
from conv_models import ACTIVATIONS, build_model, random_layer  # noqa: E402
from eq_tflite.delegate import delegate_stats, load_delegate  # noqa: E402

RESOLVERS = {
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
}


@dataclasses.dataclass
class SuiteResult:
    cases: int = 0
    invokes: int = 0
    mismatches: list = dataclasses.field(default_factory=list)
    paths: dict = dataclasses.field(default_factory=dict)
    unclaimed: list = dataclasses.field(default_factory=list)
    isa: str = ""


def random_case(rng: np.random.Generator, kind: str = "any") -> dict[str, Any]:
    """Random single-conv configuration (odd sizes, awkward channel counts)."""
    r = rng.random()
    depthwise = kind == "depthwise" or (kind == "any" and r < 0.2)
    winograd_like = kind == "winograd" or (kind == "any" and 0.2 <= r < 0.5)
    if depthwise:
        k = int(rng.choice([1, 2, 3, 3, 5]))
        stride = int(rng.choice([1, 2]))
        cin = cout = int(rng.choice([1, 3, 8, 13, 16, 17, 24, 33]))
    elif winograd_like:
        k, stride = 3, 1
        cin = int(rng.choice([8, 9, 13, 16, 24, 33]))
        cout = int(rng.choice([8, 11, 16, 19, 32]))
    else:
        k = int(rng.choice([1, 2, 3, 5]))
        stride = int(rng.choice([1, 2]))
        cin = int(rng.choice([1, 3, 4, 5, 8, 13, 17, 32]))
        cout = int(rng.choice([1, 3, 5, 8, 9, 16, 21]))
    h = int(rng.integers(max(1, k - 1), 14)) | 1  # odd sizes mostly
    w = int(rng.integers(max(1, k - 1), 14))
    padding = str(rng.choice(["SAME", "VALID"]))
    if padding == "VALID":
        h, w = max(h, k), max(w, k)
    return dict(
        cin=cin, cout=cout, k=k, stride=stride, h=h, w=w, padding=padding,
        activation=str(rng.choice(list(ACTIVATIONS))),
        wbits=int(rng.choice([7, 8])),
        in_scale=float(rng.uniform(0.01, 0.1)),
        in_zp=int(rng.integers(-128, 128)),
        ties=bool(rng.random() < 0.3),      # small right shifts: many ties
        big_scale=bool(rng.random() < 0.08),  # effective scale > 1
        batch=int(rng.choice([1, 1, 1, 2])),
        depthwise=bool(depthwise),
    )


def make_model(rng: np.random.Generator, case: dict[str, Any]) -> bytes:
    layer = random_layer(
        rng, case["cin"], case["cout"], case["k"], case["k"], case["in_scale"],
        wbits=case["wbits"], stride=case["stride"], padding=case["padding"],
        activation=case["activation"], with_bias=True, depthwise=case["depthwise"])
    if case["wbits"] == 8 and rng.random() < 0.3:
        layer.weights.reshape(-1)[int(rng.integers(0, layer.weights.size))] = -128
    if case["ties"]:
        # multiplier in [2^-4, 2^-1): right shifts of 1..4 bits, so that the
        # rounding of ties (half-up vs away from zero) is exercised often
        wmax = 3
        layer.weights = rng.integers(-wmax, wmax + 1, size=layer.weights.shape).astype(np.int8)
        layer.bias = rng.integers(-300, 300, size=case["cout"]).astype(np.int32)
        layer.w_scales[:] = 0.01
        mult = float(rng.uniform(1 / 16, 1 / 2)) / max(
            1.0, np.sqrt(layer.weights[0].size / (case["cout"] if case["depthwise"] else 1)) / 4)
        layer.out_scale = case["in_scale"] * 0.01 / mult
    elif case["big_scale"]:
        layer.out_scale = float(case["in_scale"] * float(layer.w_scales.max()) / rng.uniform(1.1, 6.0))
    return build_model([case["batch"], case["h"], case["w"], case["cin"]],
                       case["in_scale"], case["in_zp"], [layer])


def random_inputs(rng: np.random.Generator, shape, n: int = 2) -> list[np.ndarray]:
    """Full-range int8 inputs, plus a 7-bit-ranged one (128 levels)."""
    xs = [rng.integers(-128, 128, size=shape, dtype=np.int8)]
    lo = int(rng.integers(-128, 1))
    xs.append(rng.integers(lo, lo + 128, size=shape, dtype=np.int8))
    while len(xs) < n:
        xs.append(rng.integers(-128, 128, size=shape, dtype=np.int8))
    return xs


def run_model(model: bytes, xs: list[np.ndarray], **kwargs) -> list[np.ndarray]:
    it = Interpreter(model_content=model, **kwargs)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    out = it.get_output_details()[0]["index"]
    res = []
    for x in xs:
        it.set_tensor(inp, x)
        it.invoke()
        res.append(it.get_tensor(out).copy())
    return res


def run_suite(n_cases: int, seed: int, options: dict[str, Any] | None = None,
              against: str = "builtin", kind: str = "any") -> SuiteResult:
    """Compare delegate and TFLite on n random models; collect mismatches."""
    rng = np.random.default_rng(seed)
    opts = dict(options or {})
    # The suite tests the kernels: every supported node is claimed unless
    # the caller asks for the claim policy (policy=fastest) itself.
    opts.setdefault("policy", "all")
    if against == "reference":
        opts.setdefault("rounding", "reference")
    result = SuiteResult()
    for i in range(n_cases):
        case = random_case(rng, kind)
        model = make_model(rng, case)
        xs = random_inputs(rng, (case["batch"], case["h"], case["w"], case["cin"]))
        ref = run_model(model, xs, experimental_op_resolver_type=RESOLVERS[against])
        delegate = load_delegate(opts)
        got = run_model(model, xs, experimental_delegates=[delegate],
                        experimental_op_resolver_type=RESOLVERS["builtin"])
        stats = delegate_stats(delegate)
        result.isa = stats["isa"]
        result.cases += 1
        if stats["claimed"] != 1:
            result.unclaimed.append((i, case))
        for node in stats["nodes"]:
            for p, c in node["paths"].items():
                result.paths[p] = result.paths.get(p, 0) + c
        for j, (a, b) in enumerate(zip(ref, got)):
            result.invokes += 1
            if not np.array_equal(a, b):
                diff = np.abs(a.astype(int) - b.astype(int))
                result.mismatches.append(
                    dict(case=i, input=j, config=case, max_abs=int(diff.max()),
                         frac=float((diff > 0).mean())))
    return result


def _parse_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", choices=sorted(RESOLVERS), default="builtin")
    ap.add_argument("--options", nargs="*", default=[])
    ap.add_argument("--json", action="store_true",
                    help="also print the result as one JSON line (for the qemu tests)")
    args = ap.parse_args()
    res = run_suite(args.cases, args.seed, _parse_options(args.options), args.against)
    if args.json:
        print(json.dumps(dataclasses.asdict(res)))
    for m in res.mismatches[:10]:
        print("MISMATCH", m)
    print(f"cases={res.cases} invokes={res.invokes} mismatches={len(res.mismatches)} "
          f"unclaimed={len(res.unclaimed)} paths={res.paths}")
    return 0 if not res.mismatches and not res.unclaimed else 1


if __name__ == "__main__":
    sys.exit(main())
