"""Audit preference, KTO and reward data for what a trainer would learn from without a word: pairs whose two
answers are the same, repeated rows, pairs that contradict each other, empty answers, a length bias (DPO
learns "longer wins" when chosen answers are mostly the longer ones) and truncation that cuts one side of a
pair only.

Rows are read, detected and converted by the data layer (`formats.binding_for`, `convert.unit`), so an audit
sees what a run trains on, and row numbers count from 1 within the split as the data layer's errors do.
Every check groups rows by hash and never compares two rows with each other, so 200,000 rows take seconds.

    report = audit(DataSpec(path="prefs.jsonl"), base_dir=None, max_length=1024)
    print("\\n".join(summary_lines(report)))

Near duplicates (and contradictions) compare text folded: case folded, and everything that is not a letter
or a digit removed ("Hello, World!" matches "hello world"). Importing this module imports neither
pyarrow nor datasets; reading does.
"""

from __future__ import annotations

import time
from pathlib import Path

from .audit_rows import (  # noqa: F401 - the finding names and the fold are the module's API too
    AUDITED_KINDS,
    FINDINGS,
    NEAR_RULE,
    TRUNCATED_ONE_SIDE,
    AuditRows,
    fold,
)
from .formats import FORMATS, binding_for
from .spec import PREFERENCE, DataError, DataSpec, locate, rows_text, slice_start, split_parts

SAMPLE_ROWS = 50  # rows the format is detected from, as the loader does

# ------------------------------------------------------------------------------------------ reading


def read_bound(spec: DataSpec, base_dir, kind: str | None = None, cache_dir=None):
    """(pyarrow Table of the columns the format binds, the Binding, where the data came from).

    The format is detected as the loader detects it (`binding_for` on the first rows). A whole local JSON
    Lines, Parquet or CSV file is then read by pyarrow, its bound columns only (an audit reads a file once:
    no datasets cache is written); hub datasets, folders, slices, renamed columns and whatever pyarrow cannot
    read go through the loader (`sources.load_raw`), which also names the line of a malformed file."""
    from .sources import load_raw, peek, rename_dataset

    where, target = locate(spec, base_dir)
    whole_file = where == "local" and target.is_file()
    if whole_file and not split_parts(spec.split, spec.section)[1] and not spec.columns:
        sample = peek(spec, base_dir, SAMPLE_ROWS)
        if sample:
            binding = binding_for(sample, spec, kind)
            table = _read_local(target, _bound(binding))
            if table is not None:
                return table, binding, str(target)
    dataset, origin = load_raw(spec, base_dir, cache_dir)
    dataset = rename_dataset(dataset, spec)
    if len(dataset) == 0:
        raise DataError(
            "the dataset has no rows", file=origin, key=spec.section, fix="check the file and the split"
        )
    binding = binding_for(dataset.select(range(min(SAMPLE_ROWS, len(dataset)))).to_list(), spec, kind)
    return dataset.select_columns(_bound(binding)).with_format("arrow")[:], binding, origin


def _bound(binding) -> list[str]:
    return list(dict.fromkeys(binding.fields.values()))


def _read_local(path: Path, columns: list[str]):
    """The `columns` of a local file as a pyarrow Table, or None where pyarrow cannot read it."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            options = pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True)
            return pcsv.read_csv(path, convert_options=options)
        if suffix in (".jsonl", ".json"):
            return _read_json_lines(path, columns)
    except (pa.ArrowException, OSError, UnicodeDecodeError):
        return None
    return None


def _read_json_lines(path: Path, columns: list[str]):
    """JSON Lines, parsing only `columns` (with the types the file's first megabyte shows: about twice as fast
    as inferring every column), else inferring; None for a JSON array, which pyarrow does not read."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return None
    options = pj.ReadOptions(block_size=1 << 24)
    head = head[: head.rfind(b"\n") + 1]
    if head:
        schema = pj.read_json(io.BytesIO(head)).schema
        if all(c in schema.names and not pa.types.is_null(schema.field(c).type) for c in columns):
            explicit = pa.schema([schema.field(c) for c in columns])
            parse = pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="ignore")
            try:
                return pj.read_json(path, read_options=options, parse_options=parse)
            except pa.ArrowInvalid:
                pass  # a later row holds another type: infer from the whole file
    return pj.read_json(path, read_options=options).select(columns)


# ------------------------------------------------------------------------------------------ audit


def audit(
    spec: DataSpec,
    base_dir=None,
    *,
    kind: str | None = None,
    max_length: int | None = None,
    tokenizer=None,
    tokenizer_name: str | None = None,
    cache_dir=None,
) -> dict:
    """Audit one dataset; returns the full report (JSON-ready). `kind` is the algorithm's data kind when a
    recipe gives one (preference or unpaired; None: what the data holds). With `max_length`, rows are
    measured in tokens of `tokenizer` when one is given (the chat template's rendering of prompt + answer),
    else in characters. Raises DataError when the data cannot be read or holds no pairs or labelled rows."""
    started = time.perf_counter()
    table, binding, origin = read_bound(spec, base_dir, kind, cache_dir)
    native = FORMATS[binding.format].kind
    if native not in AUDITED_KINDS:
        raise DataError(
            f"format {binding.format} holds {native.replace('_', ' ')} data; audit reads preference pairs "
            "(dpo, reward, …) or rows labelled good/bad (kto)",
            file=origin,
            key=spec.section,
            fix="point it at preference or KTO data (docs/data.md lists their layouts)",
        )
    rows = AuditRows(native, tokenizer if max_length else None, max_length)
    first = slice_start(split_parts(spec.split, spec.section)[1]) + 1
    rows.read(table, binding, first)
    report = {
        "data": origin,
        "split": spec.split,
        "format": binding.format,
        "kind": "pairs" if native == PREFERENCE else "unpaired",
        "rows": table.num_rows,
        "rows_audited": len(rows.numbers),
        "length_unit": "tokens" if rows.tokenizer is not None else "characters",
        "tokenizer": tokenizer_name if rows.tokenizer is not None else None,
        "max_length": max_length,
        "near_duplicate_rule": NEAR_RULE,
        **rows.findings(),
    }
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


# ------------------------------------------------------------------------------------------ reading a report


def found(report: dict) -> dict[str, int]:
    """{finding: count} of the classes with at least one row."""
    return {name: finding["count"] for name, finding in report["findings"].items() if finding["count"]}


def bias_text(report: dict) -> str:
    bias = report["length_bias"]
    if report["kind"] == "unpaired":
        if bias["ratio"] is None:
            return "length: no desirable and undesirable rows to compare"
        return (
            f"desirable answers {bias['desirable_mean']:.0f} characters on average, undesirable "
            f"{bias['undesirable_mean']:.0f} (ratio {bias['ratio']:.2f})"
        )
    if not bias["pairs"]:
        return "length bias: no pairs"
    return (
        f"chosen longer in {bias['chosen_longer']} of {bias['pairs']} pairs ({bias['chosen_longer_share']:.0%}), "
        f"mean length ratio chosen/rejected {bias['mean_ratio']:.2f} (characters)"
    )


def summary_lines(report: dict, shown: int = 3) -> list[str]:
    """The screen summary: what was read, one line per finding class (count, first rows), the length bias."""
    unit_text = report["length_unit"] + (f" of {report['tokenizer']}" if report["tokenizer"] else "")
    limit = f", max length {report['max_length']} {unit_text}" if report["max_length"] else ""
    lines = [
        f"audit of {report['data']} (split {report['split']}): {report['rows']} rows, format {report['format']}, "
        f"{report['rows_audited']} {report['kind'] if report['kind'] == 'pairs' else 'labelled rows'} audited"
        f"{limit}"
    ]
    for name, finding in report["findings"].items():
        rows = f"  {rows_text(finding['rows'], shown)}" if finding["rows"] else ""
        extra = ""
        if name == TRUNCATED_ONE_SIDE and finding["count"]:
            extra = f" (chosen cut {len(finding['chosen_cut'])}, rejected cut {len(finding['rejected_cut'])})"
        lines.append(f"  {name:<19}{finding['count']:>7}{rows}{extra}")
    for name, why in report["skipped"].items():
        lines.append(f"  {name:<19}{'-':>7}  not checked: {why}")
    lines.append(f"  {'length_bias':<19}{'':>7}  {bias_text(report)}")
    return lines


def one_line(report: dict, section: str = "data.train") -> str:
    """The line a run prints: the findings with their first rows, and the length bias."""
    counts = found(report)
    listed = ", ".join(
        f"{name} {count} ({rows_text(report['findings'][name]['rows'], 2)})" for name, count in counts.items()
    )
    what = f"{sum(counts.values())} findings: {listed}" if counts else "no problem found"
    return f"audit {section}: {report['rows_audited']}/{report['rows']} rows, {what}; {bias_text(report)}"
