"""Deferred imports (align_recipes/deferred.py): bitsandbytes' code runs only when something uses it.

Each check runs in a fresh interpreter: this test process has long since imported everything.
"""

from __future__ import annotations

import pytest
from interpreter_helpers import run_python

pytest.importorskip("bitsandbytes")


def test_a_run_that_does_not_quantize_never_runs_bitsandbytes():
    """Importing the trainers imports transformers, peft and (through peft) bitsandbytes; torch's custom-op
    registration walks sys.modules with inspect.getmodule. None of that may run bitsandbytes' code."""
    out = run_python("""
        import inspect, sys
        import align_recipes.run.training, align_recipes.rl.trainer, peft, transformers.trainer
        from align_recipes.deferred import is_loaded
        inspect.getmodule(inspect)  # reads __file__ of every module in sys.modules
        print(is_loaded("bitsandbytes"), "bitsandbytes.nn" in sys.modules, "peft" in sys.modules)
    """)
    assert out == "False False True"


def test_first_use_runs_the_real_module_in_place():
    """peft holds the module object it imported; after the first use that same object is the real package,
    and submodule imports work before and after."""
    out = run_python("""
        import align_recipes, peft.helpers
        import bitsandbytes
        from align_recipes.deferred import is_loaded
        before = is_loaded("bitsandbytes")
        from bitsandbytes.functional import quantize_4bit  # a submodule first: the package's code runs before it
        layer = bitsandbytes.nn.Linear4bit
        print(before, is_loaded("bitsandbytes"), peft.helpers.bnb is bitsandbytes, layer.__name__,
              callable(quantize_4bit))
    """)
    assert out == "False True True Linear4bit True"


def test_defer_leaves_imported_and_missing_modules_alone():
    out = run_python("""
        import json
        import align_recipes
        from align_recipes.deferred import defer, is_loaded
        print(defer("json"), is_loaded("json"), defer("no_such_package_here"), is_loaded("no_such_package_here"))
    """)
    assert out == "False True False False"
