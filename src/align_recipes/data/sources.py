"""Reading datasets: a quick stdlib/pyarrow peek at local files (for `validate`), and the full load
through `datasets` (local files, Hugging Face hub) or ModelScope.

`datasets` is imported inside the full-load functions only, so `peek` stays fast and torch-free.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

from .spec import (
    DATA_SUFFIXES,
    DataError,
    DataSpec,
    locate,
    slice_length,
    slice_start,
    sliced_count,
    split_parts,
)

CHUNK = 1 << 16


def _bad_json(path: Path, line: int, what: str) -> DataError:
    return DataError(
        f"line {line} is {what}",
        file=path,
        line=line,
        fix="fix or delete that line: each line of a .jsonl file must be one JSON object",
    )


def read_jsonl(path: Path, start: int = 0, n: int | None = None) -> list[dict]:
    """Rows `start`…`start+n` of a JSON Lines file (blank lines skipped, as datasets does).
    A malformed line raises DataError naming the line; with n=None the whole file is checked."""
    rows: list[dict] = []
    index = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if index < start:
                index += 1
                continue
            try:
                row = json.loads(line.rstrip())
            except json.JSONDecodeError as error:
                raise _bad_json(
                    path, number, f"not valid JSON ({error.msg} at column {error.colno})"
                ) from None
            if not isinstance(row, dict):
                raise _bad_json(path, number, f"a JSON {type(row).__name__}, expected an object {{…}}")
            rows.append(row)
            index += 1
            if n is not None and len(rows) >= n:
                break
    return rows


def read_json_array(path: Path, start: int = 0, n: int | None = None) -> list[dict]:
    """Rows of a .json file holding an array of objects, decoded incrementally (no full parse)."""
    decoder = json.JSONDecoder()
    rows: list[dict] = []
    with open(path, encoding="utf-8") as handle:
        buffer, eof = handle.read(CHUNK), False
        eof = len(buffer) < CHUNK
        pos, index = buffer.index("[") + 1, 0
        while n is None or len(rows) < n:
            while True:
                while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buffer) or eof:
                    break
                more = handle.read(CHUNK)
                buffer, eof = buffer + more, len(more) < CHUNK
            if pos >= len(buffer):
                raise DataError(
                    "the JSON array is not closed with ']'", file=path, fix="the file looks truncated"
                )
            if buffer[pos] == "]":
                break
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as error:
                if not eof:
                    more = handle.read(CHUNK)
                    buffer, eof = buffer + more, len(more) < CHUNK
                    continue
                line = buffer.count("\n", 0, error.pos) + 1
                raise DataError(
                    f"line {line} is not valid JSON ({error.msg})",
                    file=path,
                    line=line,
                    fix="fix the JSON at that line (a missing comma, quote or bracket)",
                ) from None
            if not isinstance(item, dict):
                line = buffer.count("\n", 0, pos) + 1
                raise DataError(
                    f"line {line} holds a JSON {type(item).__name__}, expected an object",
                    file=path,
                    line=line,
                    fix="the array must hold one object per row",
                )
            if index >= start:
                rows.append(item)
            index, pos = index + 1, end
    return rows


def read_json(path: Path, start: int = 0, n: int | None = None) -> list[dict]:
    """A .json file: an array of objects, or JSON Lines under a .json name."""
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096).lstrip("\ufeff \t\r\n")
    if head.startswith("["):
        return read_json_array(path, start, n)
    try:
        return read_jsonl(path, start, n)
    except DataError:
        if head.startswith("{"):
            try:
                whole = json.loads(Path(path).read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):
                lists = [k for k, v in whole.items() if isinstance(v, list)]
                raise DataError(
                    "the file holds one JSON object"
                    + (f" with the rows under '{lists[0]}'" if lists else ""),
                    file=path,
                    fix="write the rows as a JSON array [{…}, {…}] or as JSON Lines",
                ) from None
        raise


def read_csv(path: Path, start: int = 0, n: int | None = None) -> list[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows: list[dict] = []
    with open(path, encoding="utf-8", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index < start:
                continue
            rows.append({k: (None if v == "" else v) for k, v in row.items() if k is not None})
            if n is not None and len(rows) >= n:
                break
    return rows


def read_parquet(path: Path, start: int = 0, n: int | None = None) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    seen = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=max(64, (n or 0) + start)):
        for row in batch.to_pylist():
            if seen >= start:
                rows.append(row)
            seen += 1
            if n is not None and len(rows) >= n:
                return rows
    return rows


def row_line(path: Any, row: int) -> int | None:
    """The line of a JSON Lines file that holds row `row` (1-based, blank lines skipped as when reading);
    None for other files, where a row is not one line."""
    path = Path(str(path))
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        if path.suffix.lower() == ".json" and handle.read(4096).lstrip("\ufeff \t\r\n").startswith("["):
            return None
        handle.seek(0)
        seen = 0
        for number, line in enumerate(handle, 1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return None


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}


def data_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in DATA_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def split_file(folder: Path, split_name: str, section: str = "data.train") -> Path:
    """The file of a folder that a validation peek reads: one named after the split, else the first."""
    files = data_files(folder)
    if not files:
        raise DataError(
            f"no .jsonl, .json, .parquet or .csv files in {folder}",
            key=f"{section}.path",
            fix="point path at a data file or a folder holding some",
        )
    pattern = re.compile(rf"(^|[/\\]){re.escape(split_name)}([-.]|[/\\])")
    named = [f for f in files if pattern.search(str(f.relative_to(folder)))]
    return (named or files)[0]


def peek(spec: DataSpec, base_dir: Path | str | None, n: int = 20) -> list[dict]:
    """The first rows of a local dataset (honouring a fixed slice start), read with the stdlib or
    pyarrow; [] for hub datasets, which cannot be checked offline."""
    where, target = locate(spec, base_dir)
    if where != "local":
        return []
    split_name, slice_text = split_parts(spec.split, spec.section)
    path = split_file(target, split_name, spec.section) if target.is_dir() else target
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"cannot read '{path.suffix}' files",
            file=path,
            key=f"{spec.section}.path",
            fix="use .jsonl, .json, .parquet or .csv",
        )
    length = slice_length(slice_text)
    try:
        return reader(path, slice_start(slice_text), n if length is None else min(n, length))
    except DataError as error:
        error.key = error.key or spec.section
        raise
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(
            f"could not read the file: {_short(error)}",
            file=path,
            key=spec.section,
            fix="check that the file is complete and UTF-8 encoded",
        ) from None


def count_rows(spec: DataSpec, base_dir: Path | str | None) -> int | None:
    """How many rows a local file's split holds (before conversion), read cheaply; None when that is not
    known without the full load (hub datasets, folders, percent slices)."""
    try:
        where, target = locate(spec, base_dir)
    except DataError:
        return None
    if where != "local" or not target.is_file():
        return None
    suffix = target.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            total = pq.ParquetFile(target).metadata.num_rows
        elif suffix == ".jsonl":
            with open(target, encoding="utf-8") as handle:
                total = sum(1 for line in handle if line.strip())
        elif suffix in READERS:
            total = len(READERS[suffix](target))
        else:
            return None
    except (DataError, OSError, UnicodeDecodeError, ValueError):
        return None
    return sliced_count(total, split_parts(spec.split, spec.section)[1])


# ---------------------------------------------------------------- full load (datasets)


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[-1][:300] if text else type(error).__name__


def _explain(path: Path, error: Exception, spec: DataSpec) -> DataError:
    """A user message for a local file datasets could not read: the malformed line if there is one."""
    reader = READERS.get(path.suffix.lower())
    if reader in (read_jsonl, read_json):
        try:
            reader(path)
        except DataError as precise:
            precise.key = precise.key or spec.section
            return precise
    return DataError(
        f"could not read the file: {_short(error)}",
        file=path,
        key=spec.section,
        fix="check that every row has the same columns and the file is not truncated",
    )


def apply_slice(dataset, split_name: str, slice_text: str):
    """Slice an in-memory Dataset like datasets slices splits ('[:100]', '[10%:20%]')."""
    if not slice_text:
        return dataset
    import datasets

    (instruction,) = datasets.ReadInstruction.from_spec(split_name + slice_text).to_absolute(
        {split_name: len(dataset)}
    )
    return dataset.select(range(instruction.from_, instruction.to))


def _load_modelscope(target: str, spec: DataSpec, split_name: str, slice_text: str):
    import datasets

    try:
        from modelscope.msdatasets import MsDataset
    except Exception as error:  # ImportError, or a missing dependency of modelscope itself
        raise DataError(
            f"source: modelscope needs the modelscope package ({_short(error)})",
            key=f"{spec.section}.source",
            fix="pip install 'align-recipes[modelscope]', or use source: hf / a local file",
        ) from None
    try:
        loaded = MsDataset.load(target, subset_name=spec.name, split=split_name)
    except Exception as error:
        raise DataError(
            f"could not load '{target}' from ModelScope: {_short(error)}",
            key=f"{spec.section}.path",
            fix="check the dataset id, subset (name:) and split",
        ) from None
    dataset = loaded.to_hf_dataset() if hasattr(loaded, "to_hf_dataset") else loaded
    if isinstance(dataset, (dict, datasets.DatasetDict)):
        if split_name not in dataset:
            raise DataError(
                f"split '{split_name}' not in '{target}'; splits: {', '.join(dataset)}",
                key=f"{spec.section}.split",
            )
        dataset = dataset[split_name]
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"ModelScope returned a {type(dataset).__name__}, not a dataset that can be indexed",
            key=f"{spec.section}.source",
            fix="streaming datasets are not supported; use a local copy",
        )
    return apply_slice(dataset, split_name, slice_text)


def load_raw(spec: DataSpec, base_dir: Path | str | None, cache_dir: str | Path | None = None):
    """(datasets.Dataset of the split, where it came from) before any conversion."""
    import datasets

    where, target = locate(spec, base_dir)
    split_name, slice_text = split_parts(spec.split, spec.section)
    cache = str(cache_dir) if cache_dir is not None else None
    if where == "modelscope":
        return _load_modelscope(target, spec, split_name, slice_text), f"modelscope:{target}"
    if where == "hf":
        try:
            return datasets.load_dataset(target, spec.name, split=spec.split, cache_dir=cache), target
        except Exception as error:
            raise DataError(
                f"could not load '{target}' from the Hugging Face hub: {_short(error)}",
                key=f"{spec.section}.path",
                fix="check the id, name: and split:, and the network (or HF_HUB_OFFLINE=1 with a "
                "cached copy); a local file must exist",
            ) from None
    path: Path = target
    if path.is_dir():
        if not data_files(path):
            split_file(path, split_name, spec.section)  # raises the no-files error
        try:
            return datasets.load_dataset(str(path), spec.name, split=spec.split, cache_dir=cache), str(path)
        except ValueError as error:
            raise DataError(
                f"could not load split '{spec.split}' from {path}: {_short(error)}",
                key=f"{spec.section}.split",
                fix="a folder's splits come from its file names (train-*.parquet, test.jsonl, …)",
            ) from None
    builder = DATA_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"cannot read '{path.suffix}' files",
            file=path,
            key=f"{spec.section}.path",
            fix="use .jsonl, .json, .parquet or .csv",
        )
    try:
        dataset = datasets.load_dataset(
            builder, data_files={"train": str(path)}, split="train" + slice_text, cache_dir=cache
        )
    except Exception as error:
        raise _explain(path, error, spec) from None
    return dataset, str(path)


def rename_dataset(dataset, spec: DataSpec):
    """Apply `columns: {target: source}` to a Dataset."""
    if not spec.columns:
        return dataset
    missing = [s for s in spec.columns.values() if s not in dataset.column_names]
    if missing:
        raise DataError(
            f"columns: {', '.join(repr(m) for m in missing)} not in the data; "
            f"columns found: {', '.join(dataset.column_names)}",
            file=spec.path,
            key=f"{spec.section}.columns",
            fix="columns maps target names to your column names, e.g. {prompt: question}",
        )
    sources = set(spec.columns.values())
    shadowed = [t for t in spec.columns if t in dataset.column_names and t not in sources]
    if shadowed:
        dataset = dataset.remove_columns(shadowed)
    copies: dict[str, Any] = {}
    renames: dict[str, str] = {}
    for target, source in spec.columns.items():
        if source in renames:  # one source feeding two targets
            copies[target] = renames[source]
        else:
            renames[source] = target
    dataset = dataset.rename_columns({s: t for s, t in renames.items() if s != t})
    for target, renamed in copies.items():
        dataset = dataset.add_column(target, dataset[renamed])
    return dataset
