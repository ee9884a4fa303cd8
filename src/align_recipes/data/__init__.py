"""The data layer: load the datasets people have and convert them to what each algorithm needs.

    spec = DataSpec.from_dict({"path": "prefs.jsonl", "split": "train[:1000]"}, section="data.train")
    rows = peek(spec, recipe_dir)                      # validate: stdlib/pyarrow only, [] for hub ids
    check_serves(rows, spec, "preference")             # -> format name, or DataError
    dataset, report = load(spec, recipe_dir, "preference")   # run: datasets.Dataset in TRL's format
    print(report.summary_line())

Kinds: language_modeling, preference, unpaired, prompt_only; each algorithm's kind is its registry
entry's `data_kind`. Formats and rules: docs/data.md. Importing this package never imports datasets
or torch; `load` does.
"""

from .convert import convert_rows
from .formats import FORMATS, binding_for, check_serves, detect_format, rename_rows, reward_columns
from .sources import peek
from .spec import (KINDS, LANGUAGE_MODELING, PREFERENCE, PROMPT_ONLY, UNPAIRED, ConversionReport, DataError,
                   DataSpec, slice_start, split_parts)


def load(spec, base_dir, kind, tokenizer=None, *, cache_dir=None):
    """Full load and conversion; see align_recipes.data.loader.load."""
    from .loader import load as _load

    return _load(spec, base_dir, kind, tokenizer, cache_dir=cache_dir)


def preview(rows, spec, kind):
    """Convert peeked rows without datasets: (converted rows, ConversionReport). For `validate`/`show`."""
    renamed = rename_rows(rows, spec)
    binding = binding_for(renamed, spec, kind)
    offset = slice_start(split_parts(spec.split, spec.section)[1])
    return convert_rows(renamed, binding, kind, spec.drop_ties, spec.section, offset)


__all__ = ["DataSpec", "DataError", "ConversionReport", "FORMATS", "KINDS", "LANGUAGE_MODELING",
           "PREFERENCE", "UNPAIRED", "PROMPT_ONLY", "peek", "detect_format", "check_serves", "load",
           "preview", "convert_rows", "reward_columns"]
