"""errors.first_line: the one line a user sees of a native error."""
from eq_tflite.errors import first_line


def test_first_line_joins_an_announcing_line():
    err = RuntimeError("Failed to initialize op resolver for calibration:\n"
                       "Encountered unresolved custom op: MyOp.\nNode number 3 (MyOp) failed.")
    assert first_line(err) == ("Failed to initialize op resolver for calibration: "
                               "Encountered unresolved custom op: MyOp.")


def test_first_line_plain():
    assert first_line(ValueError("\n  bad shape\nmore")) == "bad shape"
    assert first_line(KeyError()) == "KeyError"
