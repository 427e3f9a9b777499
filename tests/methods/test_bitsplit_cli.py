"""``--method bitsplit --weight_bits 4 --activation_bits 8 [--pack_int4]`` through the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags

from eq_tflite import convert
from eq_tflite.io import codec as fb
from eq_tflite.rewrite.rewriter import read_metadata
from eq_tflite.verify import verify


def _cli(args: list[str]) -> int:
    flags.FLAGS.unparse_flags()
    return convert.main(flags.FLAGS(["eq-tflite", *args]))


def test_cli_bitsplit_w4a8_packed(capsys, tmp_path, small_float_path, small_calibration_path):
    out = tmp_path / "w4a8.tflite"
    code = _cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                 "--method", "bitsplit", "--weight_bits", "4", "--activation_bits", "8",
                 "--bs_max_rows", "512", "--bs_rounds", "2", "--bs_ridge", "0,1", "--bs_holdout", "0.5",
                 "--bs_target", "own", "--pack_int4", "--noprogress", "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "chain bitsplit, W4A8" in text and "5 weight tensors stored as packed INT4" in text
    data = out.read_bytes()
    assert read_metadata(data)["method"] == "bitsplit"
    model = fb.parse_model(data)
    types = {fb.type_name(t.type) for t in model.subgraphs[0].tensors}
    assert "INT4" in types
    assert verify(data).ok


def test_cli_pack_int4_needs_4_bits(capsys, tmp_path, small_float_path, small_calibration_path):
    out = tmp_path / "o" / "w5.tflite"
    code = _cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                 "--method", "minmax", "--bits", "5", "--pack_int4", "--noprogress",
                 "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "at most 4 bits" in err[-1]
    assert not Path(out).exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--bs_rounds", "-1", "bs_rounds must be >= 0, got -1"),
    ("--bs_ridge", "0,x", "bs_ridge must be comma-separated numbers, got ['0', 'x']"),
    ("--bs_holdout", "1", "bs_holdout must be in [0, 1), got 1.0")])
def test_cli_bad_bitsplit_option(capsys, tmp_path, small_float_path, small_calibration_path,
                                 flag, value, message):
    out = tmp_path / "o" / "bad.tflite"
    code = _cli([str(small_float_path), "--calibration_data", str(small_calibration_path),
                 "--method", "bitsplit", "--bits", "4", flag, value, "--noprogress",
                 "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"error: {message}"
    assert not Path(out).exists()
