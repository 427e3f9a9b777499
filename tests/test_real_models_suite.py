"""The real-model suite's own pieces on synthetic data: .pth reader, metrics, graph parser, photo split.

The suite itself (models, photos) is never built or used by the tests.
"""
from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_models import metrics  # noqa: E402
from benchmarks.real_models.images import split_photos  # noqa: E402
from benchmarks.real_models.mediapipe_models import image_to_tensor_options  # noqa: E402
from benchmarks.real_models.pth import PthError, load_state_dict  # noqa: E402


class _FakeStorage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


def _fake_torch(monkeypatch):
    """Just enough of a ``torch`` module for pickle to name torch's classes, as torch.save does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only pickled by name
        raise AssertionError

    class FloatStorage:  # noqa: N801 - torch's name
        pass
    _rebuild_tensor_v2.__module__, FloatStorage.__module__ = "torch._utils", "torch"
    _rebuild_tensor_v2.__qualname__, FloatStorage.__qualname__ = "_rebuild_tensor_v2", "FloatStorage"
    utils._rebuild_tensor_v2, torch.FloatStorage, torch._utils = _rebuild_tensor_v2, FloatStorage, utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (*self.args, False, {})


def _pickle_state(tensors: dict, storages: list) -> bytes:
    import collections
    torch = sys.modules["torch"]

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.array.size)
            return None
    buf = io.BytesIO()
    P(buf, protocol=2).dump(collections.OrderedDict(tensors))
    return buf.getvalue()


def _example(monkeypatch):
    _fake_torch(monkeypatch)
    data = np.arange(24, dtype=np.float32)
    st = _FakeStorage("0", data)
    tensors = {"w": _Tensor(st, 0, (2, 3, 4), (12, 4, 1)),
               "t": _Tensor(st, 2, (3, 2), (1, 4)),          # a strided (transposed) view
               "s": _Tensor(st, 5, (), ())}
    expect = {"w": data.reshape(2, 3, 4), "t": np.array([[2, 6], [3, 7], [4, 8]], np.float32),
              "s": np.float32(5)}
    return st, tensors, expect


def test_pth_zip_format(tmp_path, monkeypatch):
    st, tensors, expect = _example(monkeypatch)
    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _pickle_state(tensors, [st]))
        z.writestr("archive/data/0", st.array.tobytes())
    sd = load_state_dict(path)
    assert set(sd) == set(expect)
    for k, v in expect.items():
        np.testing.assert_array_equal(sd[k], v)


def test_pth_legacy_format(tmp_path, monkeypatch):
    st, tensors, expect = _example(monkeypatch)
    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    buf.write(_pickle_state(tensors, [st]))
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<q", st.array.size) + st.array.tobytes())
    path = tmp_path / "legacy.pth"
    path.write_bytes(buf.getvalue())
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["t"], expect["t"])
    path.write_bytes(buf.getvalue()[:-8])  # truncated storage
    with pytest.raises(PthError, match="truncated"):
        load_state_dict(path)


def test_pth_refuses_other_classes(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data.pkl", pickle.dumps({"x": Path("/")}, protocol=2))
    with pytest.raises(PthError, match="unsupported object"):
        load_state_dict(path)


def test_metrics_on_synthetic_outputs():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10))
    assert metrics.top1_agreement(ref, ref) == 1.0
    swapped = ref.copy()
    swapped[:50] = -swapped[:50]           # argmax moves on these (the min becomes the max)
    assert metrics.top1_agreement(ref, swapped) == pytest.approx(0.75)
    noise = ref + rng.normal(scale=0.1, size=ref.shape)
    # SNR of unit signal with 0.1 noise is about 20 dB
    assert metrics.snr_db(ref, noise) == pytest.approx(20.0, abs=0.5)
    assert metrics.snr_db(ref, ref) == float("inf")
    assert 0.99 < metrics.cosine(ref, noise) < 0.999


def test_topk_anchor_agreement():
    scores = np.tile(np.arange(100.0), (4, 1))[..., None]       # best anchors: 90..99
    other = scores.copy()
    other[0, 95:, 0] = -1                                        # 5 of the top 10 demoted
    assert metrics.topk_anchor_agreement(scores, scores) == 1.0
    assert metrics.topk_anchor_agreement(scores, other) == pytest.approx((0.5 + 3) / 4)
    coarse = np.floor(scores / 4)                                # steps of 4: anchors 88..99 share 22..24
    # 96..99 (24) are in; 92..95 (23) are in; 88..91 (22) tie for the last 2 places: 90, 91 count 1/2
    assert metrics.topk_anchor_agreement(scores, coarse) == pytest.approx((8 + 2 * 0.5) / 10)


def test_detection_iou():
    ref = np.array([[-3.0, 0.5, 2.0, -0.1], [-5.0, -4.0, -3.0, -2.0]])[..., None]
    out = np.array([[-3.0, -0.2, 2.0, 0.3], [-5.0, -4.0, -3.0, -2.0]])[..., None]
    # sample 0: float {1, 2}, quantized {2, 3}: IoU 1/3; sample 1: both empty: 1
    assert metrics.detection_iou(ref, out) == pytest.approx((1 / 3 + 1) / 2)


def test_mask_iou_and_landmarks():
    a = np.zeros((2, 4, 4, 1))
    a[0, :2] = 0.9                                                # 8 pixels on
    b = a.copy()
    b[0, 2, :2] = 0.8                                             # 2 more
    assert metrics.mask_iou(a, b) == pytest.approx((8 / 10 + 1.0) / 2)   # sample 1: both empty
    ref = np.zeros((3, 63))
    out = ref.copy()
    out[:, 0::3] += 3.0
    out[:, 1::3] += 4.0                                           # every landmark 5 px off
    out[:, 2::3] += 100.0                                         # z is not a pixel distance
    assert metrics.landmark_error_px(ref, out) == pytest.approx(5.0)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def test_image_to_tensor_options_found_by_shape():
    rng = b"\x0d" + struct.pack("<f", -1.0) + b"\x15" + struct.pack("<f", 1.0)
    opts = b"\x08" + _varint(128) + b"\x10" + _varint(96) + _field(4, rng)
    node = _field(2, b"ImageToTensorCalculator") + _field(7, _field(334361939, opts))
    graph = _field(1, node) + _field(20, b"Graph")
    assert image_to_tensor_options(graph) == [{"width": 128, "height": 96, "float_range": [-1.0, 1.0]}]
    assert image_to_tensor_options(_field(1, _field(2, b"Other"))) == []


def test_photo_split_is_disjoint_and_seeded():
    names = [f"p{i}" for i in range(20)]
    s = split_photos(names, 6, seed=0)
    assert len(s.calibration) == 6 and len(s.evaluation) == 14
    assert not set(s.calibration) & set(s.evaluation)
    assert split_photos(names, 6, seed=0) == s and split_photos(names, 6, seed=1) != s
