"""The error users see: short, naming the file, the key and the fix.

Anything a user can get wrong in a recipe, a profile, a dataset or a reward reference raises
`RecipeError` (or a list of them, as `RecipeErrors`). The CLI prints them without a traceback and
exits with code 2; any other exception is a bug in align-recipes and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

EXIT_USER_ERROR = 2
MAX_ERRORS_SHOWN = 12  # one screen


class RecipeError(Exception):
    def __init__(
        self,
        message: str,
        *,
        fix: str = "",
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
        rule: str | None = None,
        subject: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.file = file
        self.key = key
        self.line = line
        self.rule = rule  # the named check that found it (plan/rules.py), when one did
        self.subject = (
            subject  # the input it found missing, for rules that wait for an earlier stage's output
        )

    def render(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        text = f"error: {where}{key}{self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text

    def __str__(self) -> str:
        return self.render()


class RecipeErrors(Exception):
    """Several independent problems found in one pass, so the user fixes them all at once."""

    def __init__(self, errors: Iterable[RecipeError]):
        self.errors = list(errors)
        super().__init__(self.render())

    def render(self) -> str:
        shown = [e.render() for e in self.errors[:MAX_ERRORS_SHOWN]]
        hidden = len(self.errors) - len(shown)
        if hidden > 0:
            shown.append(f"… and {hidden} more")
        return "\n".join(shown)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelled key, or a pointer to the valid keys."""
    candidates = sorted(candidates)
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if len(candidates) <= 12:
        return "valid keys: " + ", ".join(candidates)
    return "see docs/recipes.md for the valid keys"
