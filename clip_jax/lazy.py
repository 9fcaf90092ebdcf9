"""Packages whose modules import on first attribute access (PEP 562).

Python binds a submodule to its package only once something imports it, so after a bare
`import clip_jax` a dotted path the docs name (`clip_jax.pretrained.factory.export_hf_from`)
worked or raised AttributeError depending on what the process happened to import before.
Every package of clip_jax ends with `__getattr__ = lazy.submodules(__name__)`, so such a path
always resolves and still loads nothing (JAX, TensorFlow) until it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType


def submodules(package: str) -> Callable[[str], ModuleType]:
    """A module-level `__getattr__` for `package` that imports `package.<name>` when asked for
    `name`; AttributeError (what `hasattr` and `getattr(..., default)` expect) when there is no
    such module. An ImportError inside an existing module propagates as itself."""

    def __getattr__(name: str) -> ModuleType:
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
