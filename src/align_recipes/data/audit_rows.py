"""What the data audit keeps of each converted row, and the findings it draws from them (data/audit.py reads
the rows and reports). Every check groups rows by hash and never compares two rows with each other.

Near duplicates (and contradictions) compare text folded: case folded, and everything that is not a letter
or a digit removed ("Hello, World!" matches "hello world").
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Any

from .convert import unit
from .messages import RowProblem, is_blank
from .spec import PREFERENCE, UNPAIRED

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
    if len(value) == 1:  # the common case, without a join
        content = value[0]["content"]
        return f"{value[0]['role']}\x1f{content}", len(content)
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in value), sum(len(m["content"]) for m in value)


class AuditRows:
    """What the audit keeps of each converted row: hashes of its exact and folded texts and its lengths
    (never the texts themselves), plus the rows conversion dropped, by finding."""

    def __init__(self, native: str, tokenizer, max_length: int | None):
        self.native = native
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

    def read(self, table, binding, first: int) -> None:
        """Convert and keep every row of `table` (a pyarrow Table of the bound columns), numbered from `first`."""
        number = first - 1
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                try:
                    self.add(number, unit(row, binding, self.native))
                except RowProblem as problem:
                    empty = all(is_blank(value) for value in row.values())
                    self.drop(number, "empty row" if empty else str(problem), binding)
                except (TypeError, ValueError, AttributeError) as problem:
                    self.drop(number, f"unreadable value ({type(problem).__name__})", binding)

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
        groups: dict[tuple, list[int]] = defaultdict(list)  # folded key -> indices of its rows, in order
        for index, key in enumerate(self.folded):
            groups[key].append(index)
        found[DUPLICATE], found[NEAR_DUPLICATE] = self._repeats(groups)
        found[CONTRADICTORY] = self._contradictions(groups)
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

    def _repeats(self, groups: dict[tuple, list[int]]) -> tuple[dict, dict]:
        """Rows that repeat an earlier one exactly (duplicate) or once folded (near_duplicate); groups list
        the first row and its repeats."""
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

    def _contradictions(self, sides: dict[tuple, list[int]]) -> dict:
        """Pairs: the same prompt with the answers in the other order. KTO rows: the same prompt and answer
        labelled both ways. Compared folded; groups list the rows of each side, the side with the first row
        first."""
        groups = []
        for (prompt, first, second), indices in sides.items():
            if self.pairs:
                other = sides.get((prompt, second, first)) if first < second else None
            else:
                other = sides.get((prompt, first, not second)) if second else None
            if other:
                groups.append(sorted([[self.numbers[i] for i in indices], [self.numbers[i] for i in other]]))
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
