"""What align-recipes tells the person running it, in one form and on one stream per kind.

- `info(text)`: the run's story and its results (the start screen, data reports, stage lines): stdout.
- `done(text)`: the result line, ``done: …`` (the README quotes it; scripts grep it): stdout.
- `note(text)`: worth knowing, nothing wrong (``note: …``: a resumed run's changes, rows a trainer drops): stderr.
- `warn(text)`: probably wrong, the run goes on (``warning: …``): stderr.

Notes and warnings go to stderr so that stdout stays the run's record and a pipe into a file or `grep`
keeps them visible. On a terminal their prefix is coloured (`NO_COLOR` turns that off); piped or captured
output is the plain words, so logs, tests and the docs read the same text. stdout is flushed before each
stderr line so the two keep their order in a combined log. Streams are looked up at each call (tests and
the progress bar swap them).

Diagnostics meant for whoever debugs align-recipes go through `logging` (the `align_recipes` logger), not
here; `cli.py` prints a command's own result (`show`, `list`, `eval`) directly.
"""

from __future__ import annotations

import os
import sys

RULE = "─" * 72  # the start screen's top and bottom line
_COLOURS = {"note:": "36", "warning:": "33", "done:": "32"}  # cyan, yellow, green


def _prefixed(prefix: str, text: str, stream) -> str:
    if os.environ.get("NO_COLOR") is None and getattr(stream, "isatty", lambda: False)():
        prefix = f"\033[{_COLOURS[prefix]}m{prefix}\033[0m"
    return f"{prefix} {text}"


def info(text: str = "") -> None:
    """A line of the run's story on stdout."""
    print(text, file=sys.stdout, flush=True)


def done(text: str) -> None:
    """The result line, ``done: <text>``, on stdout."""
    print(_prefixed("done:", text, sys.stdout), file=sys.stdout, flush=True)


def note(text: str) -> None:
    """``note: <text>`` on stderr."""
    _to_stderr(_prefixed("note:", text, sys.stderr))


def warn(text: str) -> None:
    """``warning: <text>`` on stderr."""
    _to_stderr(_prefixed("warning:", text, sys.stderr))


def _to_stderr(line: str) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
