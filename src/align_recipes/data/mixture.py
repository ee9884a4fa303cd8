"""Weighted dataset mixtures: one split from several sources, as alignment-handbook's recipes mix them.

Each source is loaded, detected and converted on its own (so two layouts can be mixed), then its
`weight` picks its rows: a share of its converted rows (0 < weight <= 1, rounded down, as in
alignment-handbook) or a row count (a whole number > 1). The picked rows are a seeded random subset
(`Dataset.shuffle(seed).select(range(n))`); the sources are then concatenated and the whole mixture is
shuffled with the same seed (the recipe's `train.seed`), so a run and its re-run train on the same rows.

One source with weight 1 is returned as it was converted: old single-dataset recipes train exactly as
before. The mixed rows must have one layout, since a TRL trainer takes one per dataset: conversational
prompt/completion rows mixed with chats are joined into chats (TRL then trains every token of a chat
unless `train.assistant_only_loss` is on, which the note printed says); any other difference (plain
text with chats, say) is refused naming both sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .spec import ConversionReport, DataError, DataSpec

log = logging.getLogger("align_recipes.data")


def take_count(spec: DataSpec, available: int) -> int:
    """How many of a source's `available` converted rows its weight takes."""
    if spec.count is not None:
        if spec.count > available:
            raise DataError(
                f"weight {spec.weight} asks for {spec.count} rows but {spec.path} gives {available} "
                f"after conversion",
                key=f"{spec.section}.weight",
                fix=f"ask for at most {available} rows, or a share such as 0.5",
            )
        return spec.count
    taken = int(Fraction(str(spec.weight)) * available)  # exact: 0.29 of 100 rows is 29, not 28
    if taken == 0:
        raise DataError(
            f"weight {spec.weight} of the {available} rows {spec.path} gives takes no row",
            key=f"{spec.section}.weight",
            fix=f"raise the weight to at least {1 / available:.3g}",
        )
    return taken


def sample(dataset, count: int, seed: int):
    """`count` rows of `dataset`: all of them in their order, or a random subset fixed by `seed`."""
    if count >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(count))


@dataclass
class SourceRows:
    """One source of a mixture: its conversion report and the rows its weight took."""

    spec: DataSpec
    report: ConversionReport
    taken: int

    def line(self) -> str:
        line = self.report.summary_line()
        if self.spec.weight != 1 or self.taken != self.converted:
            line += f"; weight {self.spec.weight}: {self.taken} of {self.converted} rows taken"
        return line

    @property
    def converted(self) -> int:
        return self.report.rows_out if self.report.rows_out is not None else self.report.rows_kept

    def record(self) -> dict:
        """What summary.json and the model card say about the source."""
        return {
            "section": self.spec.section,
            "path": self.spec.path,
            "split": self.spec.split,
            "format": self.report.format,
            "weight": self.spec.weight,
            "rows_read": self.report.rows_in,
            "rows_converted": self.converted,
            "rows_kept": self.taken,
        }


@dataclass
class MixtureReport:
    """What happened to one split: each source's conversion and weighting, and the mixture's size."""

    section: str  # data.train
    sources: list[SourceRows]
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def rows_in(self) -> int:
        return sum(s.report.rows_in for s in self.sources)

    @property
    def rows_dropped(self) -> int:
        return sum(s.report.rows_dropped for s in self.sources)

    @property
    def rows_left_out(self) -> int:
        """Converted rows the weights did not take."""
        return sum(s.converted - s.taken for s in self.sources)

    @property
    def rows(self) -> int:
        return sum(s.taken for s in self.sources)

    def reasons_text(self) -> str:
        if len(self.sources) == 1:
            return self.sources[0].report.reasons_text()
        return "; ".join(
            f"{s.spec.section}: {s.report.reasons_text()}" for s in self.sources if s.report.dropped
        )

    def lines(self) -> list[str]:
        """The lines printed when the data is loaded."""
        lines = [source.line() for source in self.sources] + self.notes
        if len(self.sources) > 1:
            lines.append(
                f"{self.section}: {len(self.sources)} sources mixed, {self.rows} rows, "
                f"shuffled with seed {self.seed}"
            )
        return lines

    def records(self) -> list[dict]:
        return [source.record() for source in self.sources]


def load_mixture(
    specs: list[DataSpec],
    base_dir: Path | str | None,
    kind: str,
    tokenizer=None,
    *,
    seed: int,
    section: str = "data.train",
    cache_dir: str | Path | None = None,
):
    """Load, convert and weight every source of one split and mix them: (datasets.Dataset, MixtureReport)."""
    from .loader import load

    parts, taken = [], []
    for spec in specs:
        dataset, report = load(spec, base_dir, kind, tokenizer, cache_dir=cache_dir)
        count = take_count(spec, len(dataset))
        parts.append(sample(dataset, count, seed))
        taken.append(SourceRows(spec, report, count))
    mixture = MixtureReport(section, taken, seed)
    if len(parts) == 1:
        return parts[0], mixture
    from datasets import concatenate_datasets

    parts = align(parts, [s.section for s in specs], mixture.notes)
    return concatenate_datasets(parts).shuffle(seed=seed), mixture


# --- one layout for every source ---------------------------------------------------------------------


def _conversational(feature) -> bool:
    from datasets import Value

    return not isinstance(feature, Value)


def _join_chats(dataset):
    """Conversational prompt/completion rows as chats (prompt turns, then the completion's)."""
    from datasets import Features

    features = {c: f for c, f in dataset.features.items() if c not in ("prompt", "completion")}
    features = Features({"messages": dataset.features["prompt"], **features})
    return dataset.map(
        lambda batch: {"messages": [p + c for p, c in zip(batch["prompt"], batch["completion"])]},
        batched=True,
        remove_columns=["prompt", "completion"],
        features=features,
        desc="prompt/completion -> messages",
    )


def _json_messages(parts: list) -> list:
    """When one source stores its messages as JSON (tool calls), store every source's that way."""
    from datasets import Json, List

    def is_json(feature) -> bool:
        return isinstance(getattr(feature, "feature", None), Json)

    for column in ("messages", "prompt", "completion", "chosen", "rejected"):
        if any(column in p.features and is_json(p.features[column]) for p in parts):
            parts = [
                p.cast_column(column, List(Json()))
                if column in p.features
                and not is_json(p.features[column])
                and _conversational(p.features[column])
                else p
                for p in parts
            ]
    return parts


def align(parts: list, sections: list[str], notes: list[str]) -> list:
    """The converted sources with one set of columns and features, or DataError naming the two that differ."""
    if any("messages" in p.column_names for p in parts):
        joined = []
        for index, part in enumerate(parts):
            if {"prompt", "completion"} <= set(part.column_names) and _conversational(
                part.features["prompt"]
            ):
                part = _join_chats(part)
                notes.append(
                    f"{sections[index]}: prompt/completion rows joined into chats to mix with the others; "
                    "TRL trains every token of a chat unless train.assistant_only_loss is on"
                )
            joined.append(part)
        parts = joined
    parts = _json_messages(parts)
    features: dict = {}
    for index, part in enumerate(parts):
        if _layout(part) != _layout(parts[0]):
            raise _layouts_differ(sections[0], parts[0], sections[index], part)
        for column, feature in part.features.items():
            if column in features and features[column][1] != feature:
                first = features[column][0]
                raise DataError(
                    f"'{column}' holds {_describe(features[column][1])} in {sections[first]} and "
                    f"{_describe(feature)} in {sections[index]}",
                    key=sections[index],
                    fix=f"give '{column}' one type in every source, or drop it with columns:",
                )
            features.setdefault(column, (index, feature))
    aligned = []
    for part in parts:
        for column, (_, feature) in features.items():
            if column not in part.column_names:  # a column only some sources carry (tools, reward columns)
                part = part.add_column(column, [None] * len(part), feature=feature)
        aligned.append(part.select_columns(list(features)))
    return aligned


TRL_COLUMNS = ("messages", "prompt", "completion", "chosen", "rejected", "text", "label")


def _layout(part) -> tuple:
    """A converted dataset's layout: its TRL columns and whether each holds chats or text."""
    return tuple((c, _describe(part.features[c])) for c in TRL_COLUMNS if c in part.features)


def _describe(feature) -> str:
    dtype = getattr(feature, "dtype", "values")
    return "chat" if _conversational(feature) else "text" if dtype == "string" else dtype


def _layouts_differ(first: str, a, second: str, b) -> DataError:
    shape = lambda part: ", ".join(f"{c} ({kind})" for c, kind in _layout(part))  # noqa: E731
    return DataError(
        f"{first} converts to {shape(a)} but {second} to {shape(b)}, and a trainer takes one layout",
        key=second,
        fix="mix sources that convert alike (chats with chats, plain text with plain text; "
        "docs/data.md), or force one layout with format:",
    )
