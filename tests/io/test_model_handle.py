"""The model handle (io/model.py): one parse and one serialization per rewrite, same bytes as before."""
from __future__ import annotations

import numpy as np
import pytest

from eq_tflite import api
from eq_tflite.graph import Graph
from eq_tflite.io import codec as fb
from eq_tflite.io.model import TfliteModel
from eq_tflite.rewrite.rewriter import apply_plan, pack_int4_weights
from eq_tflite.verify import verify


@pytest.fixture
def codec_calls(monkeypatch) -> dict[str, int]:
    """Counts FlatBuffer decodes and encodes (every parse and serialization goes through them)."""
    calls = {"decode": 0, "encode": 0}
    decode, encode = fb.flatbuffer_utils.convert_bytearray_to_object, fb.serialize_model

    def counted_decode(data):
        calls["decode"] += 1
        return decode(data)

    def counted_encode(model):
        calls["encode"] += 1
        return encode(model)

    monkeypatch.setattr(fb.flatbuffer_utils, "convert_bytearray_to_object", counted_decode)
    monkeypatch.setattr(fb, "serialize_model", counted_encode)
    return calls


@pytest.fixture(scope="module")
def w4(small_float_tflite, small_calibration):
    return api.convert_model(small_float_tflite, small_calibration, weight_bits=4,
                             activation_bits=8, method="minmax")


def test_unedited_handle_gives_its_bytes_back(small_float_tflite, codec_calls):
    handle = TfliteModel(small_float_tflite)
    assert TfliteModel.of(handle) is handle
    assert handle.to_bytes() == small_float_tflite
    assert codec_calls == {"decode": 1, "encode": 0}


def test_edits_are_serialized_once_without_orphan_buffers(small_float_tflite, codec_calls):
    handle = TfliteModel(small_float_tflite)
    model = handle.edit()
    tensors = model.subgraphs[0].tensors
    i = next(i for i, t in enumerate(tensors) if fb.buffer_array(model, t) is not None)
    doubled = fb.buffer_array(model, tensors[i]) * 2
    fb.set_buffer(model, tensors[i], doubled)  # a new buffer; the old one is left behind
    buffers = len(model.buffers)
    out = handle.to_bytes()
    assert handle.to_bytes() is out and codec_calls["encode"] == 1
    back = fb.parse_model(out)
    assert len(back.buffers) == buffers - 1  # the replaced buffer is gone
    np.testing.assert_array_equal(fb.buffer_array(back, back.subgraphs[0].tensors[i]), doubled)


def test_rewrite_and_int4_pack_parse_once_serialize_once(w4, small_float_tflite, codec_calls):
    """apply_plan + INT4 packing on one handle: one decode, one encode, the bytes of the
    two-step form (rewrite, serialize, parse again, pack)."""
    graph = Graph.from_tflite(w4.float_model)
    codec_calls.update(decode=0, encode=0)
    rewritten, log = apply_plan(w4.tflite_int8, graph, w4.plan, pack_int4=True)
    out = rewritten.to_bytes()
    assert codec_calls == {"decode": 1, "encode": 1}
    assert log.int4_tensors == 5
    two_step, n = pack_int4_weights(apply_plan(w4.tflite_int8, graph, w4.plan)[0].to_bytes())
    assert n == 5 and out == two_step


def test_verify_reads_a_handle_without_parsing(w4, codec_calls):
    codec_calls.update(decode=0)
    handle = TfliteModel(w4.tflite_int8)
    report = verify(handle)
    assert report.ok and report.quantized_ops > 0
    assert codec_calls["decode"] == 1  # the handle's own parse; none in verify
    assert verify(w4.tflite_int8).op_counts == report.op_counts
    assert codec_calls["decode"] == 2  # bytes: parsed once for every check verify runs


def test_load_stage_readers_take_a_handle(small_float_tflite, codec_calls):
    """The float model's readers take one handle: no parse each (bytes: one parse each)."""
    from eq_tflite.io.normalize import check_custom_ops
    from eq_tflite.io.sources import signature_input_names, signature_output_names
    handle = TfliteModel(small_float_tflite)
    codec_calls.update(decode=0)
    graph = Graph.from_tflite(handle)
    names = signature_input_names(handle), signature_output_names(handle)
    assert check_custom_ops(handle, allow_float=False) == []
    assert codec_calls["decode"] == 0
    from_bytes = Graph.from_tflite(small_float_tflite)
    assert [t.name for t in graph.tensors] == [t.name for t in from_bytes.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(graph.tensors, from_bytes.tensors)
               if a.data is not None)
    assert names == (signature_input_names(small_float_tflite),
                     signature_output_names(small_float_tflite)) and names[0]
    assert codec_calls["decode"] == 3
