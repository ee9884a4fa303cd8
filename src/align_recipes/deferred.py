"""Deferred imports: optional heavy packages that other libraries import eagerly, loaded on first use instead.

transformers imports peft whenever peft is installed, and peft imports bitsandbytes, whose import pulls in
torch._inductor: about 1.5 s of CPU and 45 MiB of resident memory on every run, though only runs that quantize
(QLoRA) or use its 8-bit optimizers ever call it. `defer` registers such a package in ``sys.modules`` without
running its code, which runs on the first read of anything the package defines. A run that quantizes gets the real
module at that moment (the same code, just later); a run that does not never pays for it.

Why not the standard library's `importlib.util.LazyLoader`: it runs the code on *any* attribute read, and
``inspect.getmodule`` reads ``__file__`` of every module in ``sys.modules``, which torch does whenever it registers
a custom operator, early in every run. bench/ppo_vs_trl.py measures the difference; tests/run/test_deferred.py checks
that a plain run never loads the package and that a QLoRA run gets the real one.
"""

from __future__ import annotations

import importlib.util
import sys
import types

DEFERRED = ("bitsandbytes",)


class DeferredModule(types.ModuleType):
    """A registered module whose code has not run yet. It has what import sets before running a module's code
    (``__name__``, ``__file__``, ``__spec__``, ``__loader__``), so tools that walk ``sys.modules`` reading those
    (``inspect.getmodule``, which torch's custom-op registration calls) leave it alone. Reading anything else,
    including ``__path__`` (importing a submodule), runs the module's code in place: every holder of this object
    then sees the real module."""

    def __getattr__(self, attr: str):
        spec = self.__spec__
        self.__class__ = types.ModuleType
        if spec.submodule_search_locations is not None:
            self.__path__ = spec.submodule_search_locations
        try:
            spec.loader.exec_module(self)
        except BaseException:
            sys.modules.pop(self.__name__, None)  # as a failed import leaves it
            raise
        return getattr(self, attr)


def defer(name: str) -> bool:
    """Register ``name`` as a `DeferredModule`; False when it is already imported or not installed."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__dict__.pop(
        "__path__", None
    )  # read through __getattr__, so importing a submodule runs the package first
    module.__class__ = DeferredModule
    sys.modules[name] = module
    return True


def is_loaded(name: str) -> bool:
    """Whether ``name``'s code has run, without running it."""
    module = sys.modules.get(name)
    return module is not None and type(module) is not DeferredModule


def defer_optional_imports() -> None:
    for name in DEFERRED:
        defer(name)
