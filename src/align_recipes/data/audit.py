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

import re
import string
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .convert import unit
from .formats import FORMATS, binding_for
from .messages import RowProblem, is_blank
from .spec import PREFERENCE, UNPAIRED, DataError, DataSpec, locate, rows_text, slice_start, split_parts

# The finding classes, in the order reports list them (recipes name them in data.audit.fail_on).
IDENTICAL = "identical"
EMPTY_ANSWER = "empty_answer"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
CONTRADICTORY = "contradictory"
TRUNCATED_ONE_SIDE = "truncated_one_side"
UNCONVERTIBLE = "unconvertible"
FINDINGS = (
    IDENTICAL,
    EMPTY_ANSWER,
    DUPLICATE,
    NEAR_DUPLICATE,
    CONTRADICTORY,
    TRUNCATED_ONE_SIDE,
    UNCONVERTIBLE,
)
NEAR_RULE = "same text once case is folded and everything but letters and digits is removed"
AUDITED_KINDS = (PREFERENCE, UNPAIRED)
SAMPLE_ROWS = 50  # rows the format is detected from, as the loader does
BATCH_ROWS = 8192

_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_NOT_ALNUM = bytes(c for c in range(128) if not chr(c).isalnum())
_NOT_WORD = re.compile(r"[\W_]+")
_EMPTY_ANSWER = re.compile(
    r"(?:empty (?:assistant turn in )?|nothing left of )'(.*)'(?: after the shared prompt)?"
)


def fold(text: str) -> bytes:
    """`text` case folded with everything but letters and digits removed: what near duplicates compare.
    ASCII text (the common case) takes one bytes.translate; other text a regular expression, same result."""
    if text.isascii():
        return text.encode().translate(_LOWER, _NOT_ALNUM)
    return _NOT_WORD.sub("", text.casefold()).encode()


def _text(value: Any) -> tuple[str, int]:
    """(exact text of a prompt or answer with its roles, characters of its content): messages or a string."""
    if isinstance(value, str):
        return value, len(value)
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in value), sum(len(m["content"]) for m in value)


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
    offset = slice_start(split_parts(spec.split, spec.section)[1])
    rows = _Rows(native, tokenizer if max_length else None, max_length)
    number = offset
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            if all(is_blank(value) for value in row.values()):
                rows.drop(number, "empty row", binding)
                continue
            try:
                rows.add(number, unit(row, binding, native))
            except RowProblem as problem:
                rows.drop(number, str(problem), binding)
            except (TypeError, ValueError, AttributeError) as problem:
                rows.drop(number, f"unreadable value ({type(problem).__name__})", binding)
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


class _Rows:
    """What the audit keeps of each converted row: hashes of its exact and folded texts and its lengths
    (never the texts themselves), plus the rows conversion dropped, by finding."""

    def __init__(self, native: str, tokenizer, max_length: int | None):
        self.pairs = native == PREFERENCE
        self.tokenizer, self.max_length = tokenizer, max_length
        self.numbers: list[int] = []
        self.exact: list[int] = []
        self.folded: list[tuple] = []  # (prompt, first answer, second answer or label)
        self.lengths: list[
            tuple[int, int]
        ] = []  # answer characters: (chosen, rejected) or (completion, label)
        self.over: list[tuple[bool, bool]] = []  # (prompt + chosen, prompt + rejected) longer than max_length
        self.dropped: dict[str, dict[str, list[int]]] = {IDENTICAL: {}, EMPTY_ANSWER: {}, UNCONVERTIBLE: {}}

    def add(self, number: int, parts: dict) -> None:
        prompt, prompt_chars = _text(parts["prompt"])
        if self.pairs:
            (first, first_chars), (second, second_chars) = _text(parts["chosen"]), _text(parts["rejected"])
            other: Any = hash(fold(second))
            if self.max_length:
                self.over.append(
                    (
                        self._length(parts["prompt"], parts["chosen"], prompt_chars + first_chars)
                        > self.max_length,
                        self._length(parts["prompt"], parts["rejected"], prompt_chars + second_chars)
                        > self.max_length,
                    )
                )
        else:
            (first, first_chars), second = _text(parts["completion"]), parts["label"]
            other, second_chars = second, second  # the label, kept as it is
        self.numbers.append(number)
        self.exact.append(hash((prompt, first, second)))
        self.folded.append((hash(fold(prompt)), hash(fold(first)), other))
        self.lengths.append((first_chars, second_chars))

    def _length(self, prompt: Any, answer: Any, characters: int) -> int:
        """Characters, or tokens of the sequence as the chat template renders it (plain text: as it is)."""
        if self.tokenizer is None:
            return characters
        if isinstance(prompt, list) and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        elif isinstance(prompt, list):
            text = "\n".join(m["content"] for m in prompt + answer)
        else:
            text = f"{prompt}{answer}"
        if len(text.encode()) <= self.max_length:  # a token holds at least one byte: it fits
            return len(text.encode())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def drop(self, number: int, reason: str, binding) -> None:
        """A row conversion drops: identical answers, an empty answer, or something else (its reason)."""
        answers = {binding.fields[f] for f in ("chosen", "rejected", "completion") if f in binding.fields}
        empty = _EMPTY_ANSWER.fullmatch(reason)
        if reason == "identical chosen and rejected":
            finding = IDENTICAL
        elif empty and (empty.group(1) in answers or "assistant turn" in reason):
            finding = EMPTY_ANSWER
        else:
            finding = UNCONVERTIBLE
        self.dropped[finding].setdefault(reason, []).append(number)

    # -------------------------------------------------------------------------------- the findings

    def findings(self) -> dict:
        found = {name: _dropped(self.dropped[name]) for name in (IDENTICAL, EMPTY_ANSWER)}
        found[DUPLICATE], found[NEAR_DUPLICATE] = self._repeats()
        found[CONTRADICTORY] = self._contradictions()
        skipped = {}
        if not self.pairs:
            del found[IDENTICAL]
            skipped[IDENTICAL] = skipped[TRUNCATED_ONE_SIDE] = "applies to pairs only"
        elif not self.max_length:
            skipped[TRUNCATED_ONE_SIDE] = "no max length (give --max-length N, or --recipe R)"
        else:
            found[TRUNCATED_ONE_SIDE] = self._one_side_truncated()
        found[UNCONVERTIBLE] = _dropped(self.dropped[UNCONVERTIBLE])
        ordered = {name: found[name] for name in FINDINGS if name in found}
        return {"findings": ordered, "skipped": skipped, "length_bias": self._length_bias()}

    def _repeats(self) -> tuple[dict, dict]:
        """Rows that repeat an earlier one exactly (duplicate) or once folded (near_duplicate); groups list
        the first row and its repeats."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, key in enumerate(self.folded):
            groups[key].append(index)
        exact, near = _finding([], groups=[]), _finding([], groups=[])
        for members in groups.values():
            if len(members) < 2:
                continue
            seen: dict[int, list[int]] = {}
            for index in members:
                if self.exact[index] in seen:
                    exact["rows"].append(self.numbers[index])
                elif seen:
                    near["rows"].append(self.numbers[index])
                seen.setdefault(self.exact[index], []).append(self.numbers[index])
            exact["groups"] += [rows for rows in seen.values() if len(rows) > 1]
            if len(seen) > 1:
                near["groups"].append([self.numbers[index] for index in members])
        for finding in (exact, near):
            finding["rows"].sort()
            finding["groups"].sort()
            finding["count"] = len(finding["rows"])
        return exact, near

    def _contradictions(self) -> dict:
        """Pairs: the same prompt with the answers in the other order. KTO rows: the same prompt and answer
        labelled both ways. Compared folded; groups list the rows of each side."""
        sides: dict[tuple, list[int]] = defaultdict(list)
        for index, key in enumerate(self.folded):
            sides[key].append(self.numbers[index])
        groups = []
        for (prompt, first, second), rows in sides.items():
            if self.pairs:
                other = sides.get((prompt, second, first)) if first < second else None
            else:
                other = sides.get((prompt, first, not second)) if second else None
            if other:
                groups.append([rows, other])
        groups.sort()
        return _finding(sorted(n for group in groups for side in group for n in side), groups=groups)

    def _one_side_truncated(self) -> dict:
        """Pairs where prompt + one answer fits max_length and prompt + the other does not."""
        chosen_cut = [n for n, (c, r) in zip(self.numbers, self.over) if c and not r]
        rejected_cut = [n for n, (c, r) in zip(self.numbers, self.over) if r and not c]
        both = sum(1 for c, r in self.over if c and r)
        return _finding(
            sorted(chosen_cut + rejected_cut), chosen_cut=chosen_cut, rejected_cut=rejected_cut, both_cut=both
        )

    def _length_bias(self) -> dict:
        """Pairs: how often the chosen answer is the longer one, and the mean length ratio chosen/rejected.
        KTO rows: the mean answer length of desirable and undesirable rows (characters)."""
        if not self.pairs:
            good = [n for n, label in self.lengths if label]
            bad = [n for n, label in self.lengths if not label]
            mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
            ratio = mean(good) / mean(bad) if good and bad and mean(bad) else None
            return {
                "unit": "characters",
                "desirable_mean": mean(good),
                "undesirable_mean": mean(bad),
                "ratio": ratio,
            }
        pairs = len(self.lengths)
        longer = sum(1 for c, r in self.lengths if c > r)
        shorter = sum(1 for c, r in self.lengths if c < r)
        ratios = [c / r for c, r in self.lengths if r]
        return {
            "unit": "characters",
            "pairs": pairs,
            "chosen_longer": longer,
            "rejected_longer": shorter,
            "same_length": pairs - longer - shorter,
            "chosen_longer_share": longer / pairs if pairs else None,
            "mean_ratio": sum(ratios) / len(ratios) if ratios else None,
        }


def _finding(rows: list[int], **extra) -> dict:
    return {"count": len(rows), "rows": rows, **extra}


def _dropped(reasons: dict[str, list[int]]) -> dict:
    return _finding(sorted(n for rows in reasons.values() for n in rows), reasons=reasons)


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
