"""`models.quiet_libraries()` mutes the libraries' progress bars without importing what a verb does not use:
chat and export load a saved model and never read a dataset, so `datasets` stays unimported there (about 0.7
CPU s of start-up each). Each check runs in a fresh interpreter, without the variable it sets."""

from __future__ import annotations

import os

from interpreter_helpers import run_python

VARIABLE = "HF_DATASETS_DISABLE_PROGRESS_BARS"


def without_variable() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != VARIABLE}


def test_quieting_does_not_import_datasets_and_mutes_it_when_it_is_imported_later():
    out = run_python(
        """
        import sys
        from align_recipes.run import models
        models.quiet_libraries()
        print("datasets" in sys.modules, end=" ")
        import datasets
        print(datasets.utils.are_progress_bars_disabled())
    """,
        env=without_variable(),
    )
    assert out == "False True"


def test_datasets_imported_before_is_muted_too():
    out = run_python(
        """
        import datasets
        from align_recipes.run import models
        print(datasets.utils.are_progress_bars_disabled(), end=" ")
        models.quiet_libraries()
        print(datasets.utils.are_progress_bars_disabled())
    """,
        env=without_variable(),
    )
    assert out == "False True"
