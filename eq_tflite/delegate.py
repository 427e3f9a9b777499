"""Python side of the EasyQuant TFLite delegate (``delegates/``).

The delegate is a C shared library, built by ``pip install .`` into this
package as ``eq_tflite/_eqdelegate*.so`` and loaded by TFLite's
external-delegate API.  It runs eligible int8 CONV_2D nodes with integer
Winograd F(2x2,3x3) or a direct convolution with int16 accumulation, bit-exact
with TFLite's own kernels.  By default (option ``policy=fastest``) it claims
only the nodes whose kernel a per-layer benchmark measured faster than XNNPACK
on this CPU class; ``policy=all`` claims every supported node.  Options are
documented in ``delegates/README.md``.

Example::

    from ai_edge_litert.interpreter import Interpreter
    from eq_tflite.delegate import load_delegate, delegate_stats

    d = load_delegate({"debug": 1})   # policy=fastest: only measured wins
    interp = Interpreter("model_int7.tflite", experimental_delegates=[d])
    interp.allocate_tensors()
    ...
    print(delegate_stats(d))
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import json
import os
import sys
from typing import Any, Mapping

__all__ = [
    "LIBRARY_ENV",
    "DelegateNotBuiltError",
    "library_path",
    "load_delegate",
    "delegate_stats",
    "delegate_layout",
]

#: Environment variable that overrides the library location (used by the
#: sanitizer test, handy for trying a locally built variant).
LIBRARY_ENV = "EQ_TFLITE_DELEGATE_LIB"

_LIB_GLOB = "_eqdelegate*.so"


class DelegateNotBuiltError(FileNotFoundError):
    """The native delegate library is not present in the installed package."""


def package_dirs() -> list[str]:
    """Where an ``eq_tflite`` package with the built library may be, in search order.

    The imported package first; then every ``eq_tflite`` folder on ``sys.path``
    and the source folder of an editable install (``direct_url.json``): a
    checkout (e.g. the current directory, first on ``sys.path``) shadows the
    installed package, which still holds the library ``pip install .`` built.
    """
    spec = importlib.util.find_spec("eq_tflite")
    dirs: list[str] = []
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(spec.submodule_search_locations)
    dirs.append(os.path.dirname(os.path.abspath(__file__)))
    for entry in sys.path:
        dirs.append(os.path.join(os.path.abspath(entry or os.curdir), "eq_tflite"))
    dirs.extend(_installed_source_dirs())
    unique = list(dict.fromkeys(os.path.normpath(d) for d in dirs))
    return [d for d in unique if os.path.isdir(d)]


def _installed_source_dirs() -> list[str]:
    """The package folder of an editable install of the eq-tflite distribution, if any."""
    try:
        from importlib import metadata
        text = metadata.distribution("eq-tflite").read_text("direct_url.json")
        url = json.loads(text or "{}").get("url", "")
    except Exception:  # noqa: BLE001 - not installed, or no/odd metadata
        return []
    if not url.startswith("file://"):
        return []
    from urllib.parse import unquote, urlparse
    return [os.path.join(unquote(urlparse(url).path), "eq_tflite")]


def library_path() -> str:
    """Return the path of the built delegate shared library.

    The ``EQ_TFLITE_DELEGATE_LIB`` environment variable, when set, wins.
    Otherwise the library is looked up inside the ``eq_tflite`` package
    (``_eqdelegate*.so``, as installed by ``pip install .`` or built with
    ``python setup.py build_ext --inplace``), also when a checkout without a
    built library shadows the installed package (see ``package_dirs``).

    Raises:
        DelegateNotBuiltError: if the library cannot be found.
    """
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not os.path.isfile(override):
            raise DelegateNotBuiltError(
                f"{LIBRARY_ENV}={override!r} does not name a file")
        return os.path.abspath(override)
    searched = package_dirs()
    for d in searched:
        found = sorted(glob.glob(os.path.join(d, _LIB_GLOB)))
        if found:
            return os.path.abspath(found[0])
    raise DelegateNotBuiltError(
        "the eq-tflite delegate library (_eqdelegate*.so) is not built; "
        "run `pip install .` (or `python setup.py build_ext --inplace` in a "
        f"checkout). Searched: {', '.join(searched)}")


def _stringify_options(options: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (options or {}).items():
        if isinstance(value, bool):
            value = int(value)
        out[str(key)] = str(value)
    return out


def _runtime_load_delegate():
    """Return a ``load_delegate`` function from the first available runtime."""
    try:
        from ai_edge_litert.interpreter import load_delegate as fn
        return fn
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import load_delegate as fn  # type: ignore
        return fn
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore
        return tf.lite.experimental.load_delegate
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ImportError(
            "no TFLite runtime found: install ai-edge-litert (preferred), "
            "tflite-runtime or tensorflow") from exc


def load_delegate(options: Mapping[str, Any] | None = None, *,
                  runtime: str | None = None) -> Any:
    """Load the delegate for ``experimental_delegates=[...]``.

    Args:
        options: delegate options, e.g. ``{"debug": 1, "winograd": 0}``;
            values may be int/bool/str.  See ``delegates/README.md``.
        runtime: force the runtime whose ``load_delegate`` is used:
            ``"ai_edge_litert"``, ``"tflite_runtime"`` or ``"tensorflow"``.
            By default the first importable one, in that order.  The delegate
            object must be used with an interpreter of the same runtime.

    Returns:
        The runtime's ``Delegate`` object.

    Raises:
        ValueError: the library rejected the options (the message says why).
        DelegateNotBuiltError: the library is not built.
    """
    path = library_path()
    opts = _stringify_options(options)
    if runtime is None:
        fn = _runtime_load_delegate()
    elif runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import load_delegate as fn
    elif runtime == "tflite_runtime":
        from tflite_runtime.interpreter import load_delegate as fn  # type: ignore
    elif runtime == "tensorflow":
        import tensorflow as tf  # type: ignore
        fn = tf.lite.experimental.load_delegate
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    return fn(path, opts)


def _native(delegate: Any) -> tuple[ctypes.CDLL, int]:
    ptr = delegate._get_native_delegate_pointer()  # pylint: disable=protected-access
    lib = getattr(delegate, "_library", None)
    if lib is None:
        lib = ctypes.CDLL(library_path())
    return lib, ptr


def _call_json(delegate: Any, name: str) -> dict[str, Any] | None:
    lib, ptr = _native(delegate)
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    n = fn(ptr, None, 0)
    if n < 0:
        return None
    buf = ctypes.create_string_buffer(n + 1)
    fn(ptr, buf, n + 1)
    return json.loads(buf.value.decode("utf-8"))


def delegate_stats(delegate: Any) -> dict[str, Any]:
    """Per-node statistics of a loaded delegate.

    Returns a dict with the CPU features the kernels may use (``isa``:
    ``avx2``, ``neon``, ``neon-dotprod`` or ``scalar``), the CPU class of the
    claim policy's cost table (``cpu_class``: ``avx512vnni``, ``avx2``,
    ``neon-dotprod``, ``neon``, ``scalar``), the options (``policy``:
    ``fastest`` or ``all``; ``rounding`` names the requantization rule in
    force), the number of CONV_2D / DEPTHWISE_CONV_2D nodes ``considered``
    and ``claimed``, ``nodes``: one entry per claimed node with its shape,
    ``why`` it was claimed, the kernel variant chosen for it (``kernel``,
    ``kernel_isa``) and ``paths``, the number of invokes that ran each of
    that kernel's paths (``winograd_avx2``, ``direct_avx2_i16x8``,
    ``direct_neon_r8``, ...), and ``declined``: one entry per node left to
    TFLite, with ``why`` (slower than XNNPACK per the cost table, no
    measurement, or the unsupported feature).
    """
    stats = _call_json(delegate, "eqd_stats_json")
    if stats is None:
        raise RuntimeError("delegate statistics unavailable")
    return stats


def delegate_layout(delegate: Any) -> dict[str, Any] | None:
    """Tensors and nodes as the C library read them at its last Prepare.

    Only recorded with the option ``record_layout=1``; used by the ABI test
    to catch struct layout mismatches.
    """
    return _call_json(delegate, "eqd_layout_json")
