"""User-facing lines (align_recipes.console): the run's story and results on stdout, notes and warnings on
stderr, the same plain words wherever output is captured, a coloured prefix on a terminal only."""

from __future__ import annotations

import io

from align_recipes import console


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_story_and_result_go_to_stdout_notes_and_warnings_to_stderr(capsys):
    console.info("  model      builtin:tiny-qwen2")
    console.note("nothing to resume in out (no complete checkpoint): starting over")
    console.warn("the held-out metric fell")
    console.done("12 steps · exact_match 0.10 → 0.80")
    out, err = capsys.readouterr()
    assert out == "  model      builtin:tiny-qwen2\ndone: 12 steps · exact_match 0.10 → 0.80\n"
    assert err == (
        "note: nothing to resume in out (no complete checkpoint): starting over\n"
        "warning: the held-out metric fell\n"
    )


def test_a_terminal_gets_a_coloured_prefix_unless_no_color(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    console.note("resuming")
    assert terminal.getvalue() == "\033[36mnote:\033[0m resuming\n"
    monkeypatch.setenv("NO_COLOR", "1")
    console.warn("plain")
    assert terminal.getvalue().endswith("\nwarning: plain\n")
