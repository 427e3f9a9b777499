"""Scale-optimization methods (stage 4): a registry of specs.

Adding a method is one file, ``methods/<name>.py``, whose function
``(ctx: MethodContext) -> Plan`` is decorated with :func:`method` (name, whether
it needs data, default sample count, options dataclass, chain defaults), plus
its test. Everything else reads the registry: the chain (``eq_tflite.chain``:
which methods need data, which steps a method turns on), the CLI (the
``--method`` choices and one flag per option, ``eq_tflite.convert``) and the
API (default sample counts, the op check of simulating methods). Methods that
walk the model layer by layer put their per-layer solver on the shared driver
(``methods/layerwise.py``). See ``eq_tflite.plan`` for the Plan contract.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from eq_tflite.plan import Method


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``options``/``prefix``: its options dataclass (``eq_tflite.options``) and key
    prefix; ``reads``: other methods whose options it also reads (Bit-Split can
    run EasyQuant); ``chain``: chain steps it turns on by default (DFQ: CLE,
    absorption, data-free bias correction); ``simulates``: it runs the model
    in ``eq_tflite.simulate``, so every op must be in the op table.
    """

    name: str
    run: Method
    summary: str
    needs_data: bool = True
    default_samples: int | None = None   # None: every sample (less the agreement check's)
    options: type | None = None
    prefix: str = ""
    reads: tuple[str, ...] = ()
    chain: Mapping[str, Any] = field(default_factory=dict)
    simulates: bool = False


_REGISTRY: dict[str, MethodSpec] = {}
#: Modules of this package that are helpers, not methods.
_HELPERS = ("layerwise",)


def method(name: str, **spec: Any) -> Callable[[Method], Method]:
    """Decorator registering the function as method ``name`` (``MethodSpec`` fields)."""
    def wrap(fn: Method) -> Method:
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = MethodSpec(name, fn, spec.pop("summary", summary), **spec)
        return fn
    return wrap


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _HELPERS:
            importlib.import_module(f"{__name__}.{info.name}")


def specs() -> dict[str, MethodSpec]:
    """Every registered method by name, sorted."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def available() -> list[str]:
    """Names of the registered methods."""
    return list(specs())


def spec(name: str) -> MethodSpec:
    """The spec of method ``name``; ValueError listing the choices otherwise."""
    known = specs()
    if name not in known:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(known)}")
    return known[name]


def get(name: str) -> Method:
    """The function of method ``name`` (``spec(name).run``)."""
    return spec(name).run
