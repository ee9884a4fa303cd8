"""The data layer: load the datasets people have and convert them to what each algorithm needs.

    spec = DataSpec.from_dict({"path": "prefs.jsonl", "split": "train[:1000]"}, section="data.train")
    rows = peek(spec, recipe_dir)                      # validate: stdlib/pyarrow only, [] for hub ids
    check_serves(rows, spec, "preference")             # -> format name, or DataError
    dataset, report = load(spec, recipe_dir, "preference")   # run: datasets.Dataset in TRL's format
    print(report.summary_line())
    mixed, mix_report = load_mixture([spec, other], recipe_dir, "preference", seed=42)  # weighted sources

Kinds: language_modeling, preference, unpaired, prompt_only; each algorithm's kind is its registry
entry's `data_kind`. Formats and rules: docs/data.md. Importing this package never imports datasets
or torch; `load` does.
"""

from .convert import convert_rows
from .formats import FORMATS, binding_for, check_serves, detect_format, rename_rows, reward_columns
from .sources import peek
from .spec import (
    KINDS,
    LANGUAGE_MODELING,
    PREFERENCE,
    PROMPT_ONLY,
    UNPAIRED,
    ConversionReport,
    DataError,
    DataSpec,
    slice_start,
    split_parts,
)


def load(spec, base_dir, kind, tokenizer=None, *, cache_dir=None):
    """Full load and conversion; see align_recipes.data.loader.load."""
    from .loader import load as _load

    return _load(spec, base_dir, kind, tokenizer, cache_dir=cache_dir)


def load_mixture(specs, base_dir, kind, tokenizer=None, *, seed, section="data.train", cache_dir=None):
    """Several sources mixed by their weights; see align_recipes.data.mixture.load_mixture."""
    from .mixture import load_mixture as _load_mixture

    return _load_mixture(specs, base_dir, kind, tokenizer, seed=seed, section=section, cache_dir=cache_dir)


def preview(rows, spec, kind):
    """Convert peeked rows without datasets: (converted rows, ConversionReport). For `validate`/`show`."""
    from .content import bind_tools, rows_use_tools
    from .formats import columns_of

    renamed = rename_rows(rows, spec)
    binding = binding_for(renamed, spec, kind)
    bind_tools(binding, kind, rows_use_tools(renamed, list(binding.fields.values())), columns_of(renamed))
    offset = slice_start(split_parts(spec.split, spec.section)[1])
    return convert_rows(renamed, binding, kind, spec.drop_ties, spec.section, offset)


def check_refused(rows, spec, kind, base_dir) -> None:
    """Raise DataError when peeked rows hold what must not be trained on as it is: image, audio or video
    parts, or tool use where `kind`'s trainers take none. For `validate`, before any model loads."""
    from .content import refusal_error
    from .sources import row_line
    from .spec import resolve_local

    _, report = preview(rows, spec, kind)
    file = resolve_local(spec, base_dir)[0] or spec.path
    error = refusal_error(report.dropped, spec.section, file, lambda row: row_line(file, row))
    if error is not None:
        raise error


__all__ = [
    "DataSpec",
    "DataError",
    "ConversionReport",
    "FORMATS",
    "KINDS",
    "LANGUAGE_MODELING",
    "PREFERENCE",
    "UNPAIRED",
    "PROMPT_ONLY",
    "peek",
    "detect_format",
    "check_serves",
    "load",
    "load_mixture",
    "preview",
    "check_refused",
    "convert_rows",
    "reward_columns",
]
