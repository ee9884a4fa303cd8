"""The full load: read the split, rename columns, detect the format, convert to the algorithm's kind
with `Dataset.map` under deterministic fingerprints (re-runs reuse the datasets cache), drop and
report bad rows, and stop when too many are dropped."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

from . import convert as _convert
from .content import bind_tools, features_use_tools, refusal_error, rows_use_tools
from .convert import DROP, PAIR_FORMATS, collect_drops, convert_batch, lm_shape, output_columns, unpair_batch
from .formats import FORMATS, Binding, binding_for
from .sources import load_raw, rename_dataset, row_line
from .spec import (
    LANGUAGE_MODELING,
    PROMPT_ONLY,
    UNPAIRED,
    ConversionReport,
    DataError,
    DataSpec,
    slice_start,
    split_parts,
)

log = logging.getLogger("align_recipes.data")
SAMPLE_ROWS = 50


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the conversion code, so a changed converter never reuses a stale cache."""
    digest = hashlib.sha256()
    for name in ("convert.py", "formats.py", "messages.py", "content.py", "loader.py"):
        digest.update((Path(_convert.__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(previous: str, *parts) -> str:
    payload = json.dumps([previous, code_version(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _features(binding: Binding, kind: str, source_features, unpaired_rows: bool = False, plain: bool = False):
    from datasets import Features, Json, List, Value

    # Tool calls (and their arguments, whose keys differ from call to call) are stored as JSON per message.
    messages = (
        Value("string")
        if plain
        else List(Json())
        if binding.tool_mode
        else List({"role": Value("string"), "content": Value("string")})
    )
    columns = ("prompt", "completion", "label") if unpaired_rows else output_columns(binding, kind)
    features = {
        c: Value("bool")
        if c == "label"
        else Value("string")
        if c == "text"
        else Json()
        if c == "tools"
        else messages
        for c in columns
        if not (plain and c == "tools")
    }
    if not unpaired_rows:
        if kind == PROMPT_ONLY:
            features.update({c: source_features[c] for c in binding.keep})
        features[DROP] = Value("string")
    return Features(features)


def _drops(converted, offset: int) -> dict[str, list[int]]:
    """{reason: row numbers} from the `_drop` column, read through Arrow (no per-row Python)."""
    if converted._indices is not None:
        return collect_drops(converted[DROP], offset)
    import pyarrow.compute as pc

    column = converted.data.column(DROP)
    positions = pc.indices_nonzero(pc.is_valid(column)).to_pylist()
    reasons = column.take(positions).to_pylist() if positions else []
    dropped: dict[str, list[int]] = {}
    for position, reason in zip(positions, reasons):
        dropped.setdefault(reason, []).append(position + 1 + offset)
    return dropped


def plain_output(binding: Binding, kind: str, tokenizer, spec: DataSpec) -> bool:
    """True when rows become TRL's standard (string) format: formats that are plain text by nature, and any
    format when the tokenizer has no chat template (single-turn data only; whole chats need a template)."""
    if FORMATS[binding.format].plain:
        return True
    if tokenizer is None or getattr(tokenizer, "chat_template", None):
        return False
    if kind == LANGUAGE_MODELING and lm_shape(binding) == "messages":
        raise DataError(
            f"format {binding.format} holds whole chats but the tokenizer has no chat template",
            key=spec.section,
            fix="set model.chat_template, or start from a model that ships one",
        )
    return True


def load(
    spec: DataSpec,
    base_dir: Path | str | None,
    kind: str,
    tokenizer=None,
    *,
    cache_dir: str | Path | None = None,
):
    """Load `spec`, convert it to `kind` and return (datasets.Dataset, ConversionReport).

    Local files go through load_dataset('json'|'csv'|'parquet'), hub ids through load_dataset, and
    source: modelscope through MsDataset. Raises DataError for anything the user can fix.
    """
    dataset, origin = load_raw(spec, base_dir, cache_dir)
    dataset = rename_dataset(dataset, spec)
    rows_in = len(dataset)
    if rows_in == 0:
        raise DataError(
            "the dataset has no rows", file=origin, key=spec.section, fix="check the file and the split slice"
        )
    sample = dataset.select(range(min(SAMPLE_ROWS, rows_in))).to_list()
    binding = binding_for(sample, spec, kind)
    bound = list(binding.fields.values())
    bind_tools(
        binding,
        kind,
        features_use_tools(dataset.features, bound) or rows_use_tools(sample, bound),
        dataset.column_names,
    )
    from datasets import Value

    binding.keep = [c for c in binding.keep if isinstance(dataset.features.get(c), Value)]
    plain = plain_output(binding, kind, tokenizer, spec)

    key = [binding.as_key(), kind, bool(spec.drop_ties), plain]
    converted = dataset.map(
        convert_batch,
        batched=True,
        fn_kwargs={"binding": binding, "kind": kind, "drop_ties": bool(spec.drop_ties), "plain": plain},
        remove_columns=dataset.column_names,
        features=_features(binding, kind, dataset.features, plain=plain),
        new_fingerprint=_fingerprint(dataset._fingerprint, "convert", key),
        desc=f"{spec.section}: {binding.format} -> {kind}",
    )
    offset = slice_start(split_parts(spec.split, spec.section)[1])
    dropped = _drops(converted, offset)
    refused = refusal_error(dropped, spec.section, origin, lambda row: row_line(origin, row))
    if refused is not None:
        raise refused
    if dropped:
        converted = converted.filter(
            lambda reason: reason is None,
            input_columns=DROP,
            new_fingerprint=_fingerprint(converted._fingerprint, "filter"),
        )
    converted = converted.remove_columns(DROP)
    if kind == UNPAIRED and binding.format in PAIR_FORMATS:
        converted = converted.map(
            unpair_batch,
            batched=True,
            remove_columns=converted.column_names,
            features=_features(binding, kind, None, unpaired_rows=True, plain=plain),
            new_fingerprint=_fingerprint(converted._fingerprint, "unpair"),
            desc=f"{spec.section}: pairs -> unpaired rows",
        )

    kept = rows_in - sum(len(rows) for rows in dropped.values())
    report = ConversionReport(
        binding.format,
        rows_in,
        kept,
        dropped,
        section=spec.section,
        kind=kind,
        source=origin,
        rows_out=len(converted),
    )
    log.info(report.summary_line())
    for line in report.details():
        log.warning(line)
    if kept == 0 or report.rows_dropped / rows_in > spec.max_drop_fraction:
        raise DataError(
            f"{report.rows_dropped} of {rows_in} rows could not be converted to {kind} "
            f"(format {binding.format}): {report.reasons_text()}",
            file=origin,
            key=spec.section,
            fix=f"fix those rows, map the right columns with columns:, or raise max_drop_fraction "
            f"(now {spec.max_drop_fraction})",
        )
    return converted, report
