"""Options: one dataclass field per option, one CLI flag per field, defaults in one place."""
import dataclasses
from dataclasses import dataclass

import pytest

from eq_tflite import api, methods, options
from eq_tflite.chain import check_options, option_owners, option_readers
from eq_tflite.errors import EqTfliteError
from eq_tflite.options import option




def test_every_option_is_a_flag_with_the_dataclass_default():
    from absl import flags

    import eq_tflite.convert  # noqa: F401  (defines the flags)
    for owner, cls, prefix in option_owners():
        for key, f in options.keys(cls, prefix).items():
            if key == "seed":
                continue
            flag = flags.FLAGS[key]
            assert flag.default is None, key  # unset: the dataclass default applies
            assert options.help_text(f, owner) in flag.help
            # the default a user reads in --help is the one that runs
            assert getattr(options.parse(cls, prefix, {}), f.name) == f.default


def test_registry_drives_the_method_choices():
    from absl import flags

    import eq_tflite.convert  # noqa: F401
    assert sorted(flags.FLAGS["method"].parser.enum_values) == methods.available()
    assert {"dfq", "spiq"} == {n for n, s in methods.specs().items() if not s.needs_data}
    assert api.DEFAULT_SAMPLES == {"easyquant": 50, "bitsplit": 256}


@dataclass(frozen=True)
class _Demo:
    steps: int = option(3, "steps", check=lambda v: v >= 1, rule="must be >= 1")
    mode: str = option("a", "mode", choices=("a", "b"))
    on: bool = option(True, "switch")
    ridge: tuple = option((0.0, 1.0), "strengths")


def test_parse_converts_cli_strings_and_validates():
    d = options.parse(_Demo, "demo", {"demo_steps": "5", "demo_on": "false", "demo_ridge": ["2", "3"],
                                      "other_key": 1})
    assert (d.steps, d.on, d.ridge, d.mode) == (5, False, (2.0, 3.0), "a")
    for values, message in [({"demo_steps": 0}, "demo_steps must be >= 1, got 0"),
                            ({"demo_steps": 2.5}, "demo_steps must be an integer"),
                            ({"demo_mode": "c"}, "demo_mode must be one of a, b"),
                            ({"demo_on": "maybe"}, "demo_on must be true or false"),
                            ({"demo_stepz": 1}, "unknown option demo_stepz")]:
        with pytest.raises(EqTfliteError, match=message):
            options.parse(_Demo, "demo", values)


def test_options_no_step_reads_are_refused():
    assert option_readers()["eq_steps"] == {"easyquant"}
    check_options("bitsplit", {"eq_steps": 10})  # Bit-Split can run EasyQuant's search
    check_options("minmax", {"dfq_sigmas": 4})   # a chain option: any method
    with pytest.raises(EqTfliteError, match="option eq_steps is read by easyquant, not by "
                                            "--method minmax"):
        check_options("minmax", {"eq_steps": 10})
    with pytest.raises(EqTfliteError, match="unknown option eq_setps"):
        check_options("easyquant", {"eq_setps": 10})
    with pytest.raises(EqTfliteError, match="cle_relu6 must be one of relu, skip"):
        check_options("dfq", {"cle_relu6": "maybe"})


def test_api_refuses_before_loading(tmp_path):
    """A bad option fails before the model is read (the path does not even exist)."""
    with pytest.raises(EqTfliteError, match="unknown option steps"):
        api.convert_model(str(tmp_path / "missing.tflite"), tmp_path / "x.npy",
                          method_options={"steps": 3})


def test_field_metadata_is_complete():
    for owner, cls, prefix in option_owners():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), (owner, f.name)


def test_cli_flags_map_one_to_one_onto_the_api():
    """Each flag passed through is a convert_model keyword with the same default."""
    import inspect

    from absl import flags

    from eq_tflite import convert
    params = inspect.signature(api.convert_model).parameters
    for name in convert.API_FLAGS:
        assert name in params, name
        if name != "progress":  # the CLI shows progress bars, the API does not
            assert flags.FLAGS[name].default == params[name].default, name
