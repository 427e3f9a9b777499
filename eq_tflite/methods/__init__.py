"""Scale-optimization methods (stage 4). Each module registers one method.

Adding a method: write ``methods/<name>.py`` with a function
``(ctx: MethodContext) -> Plan`` decorated with ``@register("<name>")`` and add
the module name to ``_MODULES``. Nothing else changes: see ``eq_tflite.plan``
for the contract.
"""
from __future__ import annotations

import importlib

from eq_tflite.plan import Method

_REGISTRY: dict[str, Method] = {}
_MODULES = ("minmax", "kl", "easyquant", "dfq", "bitsplit")


def register(name: str):
    """Decorator registering a method under ``name``."""
    def wrap(fn: Method) -> Method:
        _REGISTRY[name] = fn
        return fn
    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"eq_tflite.methods.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"eq_tflite.methods.{mod}":
                raise


def available() -> list[str]:
    """Names of the registered methods."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    """The method registered as ``name``; ValueError listing choices otherwise."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name]
