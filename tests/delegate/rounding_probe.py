"""Which requantization rule does the running TFLite use for int8 CONV_2D
and DEPTHWISE_CONV_2D?  A measuring tool (not a test): it builds random
single-layer models (many with exact ties), computes their int32
accumulators exactly in numpy, applies each candidate rule, and prints, per
(op, kernel, stride, channel block, effective scale > 0.5) group, how many
outputs each rule gets WRONG (0 = the rule the runtime uses).

    python tests/delegate/rounding_probe.py SEED CASES [any|dw] [builtin|reference]
    ~/.cache/eq-tflite-aarch64/bin/python-aarch64 tests/delegate/rounding_probe.py 1 60

Candidates: double_away (srdhm, ties away: TFLite's reference), double_up
(srdhm, ties toward +inf), single_up (ruy's aarch64 SQDMULH + SRSHL),
single_c (TFLITE_SINGLE_ROUNDING in common.h).  "blk" are the channels
below C // 8 * 8, "rem" the last C % 8.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_models import build_model, random_layer
from ai_edge_litert.interpreter import Interpreter, OpResolverType

def qmult(m):
    if m == 0: return 0, 0
    f, e = math.frexp(m)
    q = int(math.floor(f * 2**31 + 0.5))
    if q == 2**31: q //= 2; e += 1
    if e < -31: return 0, 0
    return q, e

def wrap32(v): return ((v + 2**31) % 2**32) - 2**31

def srdhm(a, b):
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
    return _tdiv(ab + nudge, 1 << 31)

def _tdiv(a, b):
    q = abs(a) // b
    return q if a >= 0 else -q

def rdbpot(x, e, away):
    mask = (1 << e) - 1; rem = x & mask
    th = (mask >> 1) + (1 if (away and x < 0) else 0)
    return (x >> e) + (1 if rem > th else 0)

def cand(acc, M, e):
    ls = max(e, 0); rs = max(-e, 0)
    x = wrap32(acc << ls)
    d = srdhm(x, M)
    out = {"double_away": rdbpot(d, rs, True), "double_up": rdbpot(d, rs, False)}
    # ruy arm64: sshl by (e>=0 ? e+1 : 0), sqdmulh (floor), srshl by k (half up)
    ls2 = e + 1 if e >= 0 else 0; k = 1 if e >= 0 else -e
    x2 = wrap32(acc << ls2)
    h = (x2 * M) >> 31
    out["single_up"] = (h + (1 << (k - 1))) >> k
    # TFLITE_SINGLE_ROUNDING common.h
    ts = 31 - e
    out["single_c"] = (acc * M + (1 << (ts - 1))) >> ts
    return out

def accs(x, layer, in_zp):
    w = layer.weights.astype(np.int64)
    n, H, W, C = x.shape
    if layer.depthwise:
        kh, kw, cout = w.shape[1], w.shape[2], w.shape[3]
    else:
        cout, kh, kw = w.shape[0], w.shape[1], w.shape[2]
    sh, sw = layer.stride
    if layer.padding == "SAME":
        oh, ow = -(-H // sh), -(-W // sw)
        pt = max(0, ((oh - 1) * sh + kh - H)) // 2; pl = max(0, ((ow - 1) * sw + kw - W)) // 2
    else:
        oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1; pt = pl = 0
    xp = np.full((n, (oh - 1) * sh + kh, (ow - 1) * sw + kw, C), in_zp, np.int64)
    hh = min(H, xp.shape[1] - pt); ww = min(W, xp.shape[2] - pl)
    xp[:, pt:pt + hh, pl:pl + ww, :] = x[:, :hh, :ww, :]
    xp -= in_zp
    acc = np.zeros((n, oh, ow, cout), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + (oh - 1) * sh + 1:sh, kx:kx + (ow - 1) * sw + 1:sw, :]
            if layer.depthwise: acc += patch * w[0, ky, kx, :]
            else: acc += np.einsum("nhwc,oc->nhwo", patch, w[:, ky, kx, :])
    if layer.bias is not None: acc += layer.bias.astype(np.int64)
    return acc

def act_range(layer):
    lo, hi = -128, 127
    q = lambda f: layer.out_zp + int(np.round(np.float32(f) / np.float32(layer.out_scale)))
    if layer.activation == "RELU": lo = max(lo, q(0.0))
    return lo, hi

def main(seed, n, dw_only=False, resolver="builtin"):
    rng = np.random.default_rng(seed)
    stats = {}
    for case in range(n):
        dw = dw_only or rng.random() < 0.5
        k = int(rng.choice([1, 3, 5])) if dw else int(rng.choice([1, 3]))
        cin = int(rng.choice([3, 8, 13, 16, 21, 32, 40]))
        cout = cin if dw else int(rng.choice([4, 8, 13, 16, 21]))
        stride = int(rng.choice([1, 2]))
        h = int(rng.integers(k, 12)); w = int(rng.integers(k, 12))
        in_scale = 0.05
        layer = random_layer(rng, cin, cout, k, k, in_scale, wbits=8, stride=stride,
                             padding=str(rng.choice(["SAME", "VALID"])), activation="NONE",
                             depthwise=dw)
        mode = rng.choice(["ties", "big", "normal"])
        if mode == "ties":
            layer.weights = rng.integers(-3, 4, size=layer.weights.shape).astype(np.int8)
            layer.bias = rng.integers(-300, 300, size=cout).astype(np.int32)
            layer.w_scales[:] = 0.01
            layer.out_scale = in_scale * 0.01 / float(rng.uniform(1 / 16, 1 / 2))
        elif mode == "big":
            layer.out_scale = float(in_scale * float(layer.w_scales.max()) / rng.uniform(1.1, 6.0))
        in_zp = int(rng.integers(-128, 128))
        model = build_model([1, h, w, cin], in_scale, in_zp, [layer])
        rt = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if resolver == "builtin" else OpResolverType.BUILTIN_REF
        it = Interpreter(model_content=model, experimental_op_resolver_type=rt)
        it.allocate_tensors()
        x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
        it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"]).astype(int)
        A = accs(x.astype(np.int64), layer, in_zp)
        for c in range(cout):
            ws = float(layer.w_scales[c])
            M, e = qmult(float(np.float32(in_scale)) * float(np.float32(ws)) / float(np.float32(layer.out_scale)))
            key = ("dw" if dw else "conv", f"k{k}", f"s{stride}", "blk" if c < cout // 8 * 8 else "rem", mode == "big")
            st = stats.setdefault(key, {})
            for a, yy in zip(A[..., c].ravel(), y[..., c].ravel()):
                cs = cand(int(a), M, e)
                for name, v in cs.items():
                    v = min(127, max(-128, v + layer.out_zp))
                    ok, tot = st.get(name, (0, 0))
                    st[name] = (ok + (v == yy), tot + 1)
    for key in sorted(stats):
        st = stats[key]
        print(key, {k: f"{v[1]-v[0]}" for k, v in st.items()}, "n=", next(iter(st.values()))[1])

if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "dw",
         sys.argv[4] if len(sys.argv) > 4 else "builtin")
