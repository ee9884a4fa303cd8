"""paths.built_in_place: a cached folder appears whole or not at all, and a complete one is never replaced
(another process may be reading it: two test workers or two ranks building the same cache)."""

from __future__ import annotations

import pytest

from align_recipes.paths import built_in_place

MARKER = "done.json"


def build(final, who: str, complete: bool = True) -> None:
    with built_in_place(final, MARKER) as tmp:
        (tmp / "who").write_text(who)
        if complete:
            (tmp / MARKER).write_text("{}")


def test_a_build_lands_whole_and_leaves_no_temporary_folder(tmp_path):
    final = tmp_path / "cache" / "model"
    build(final, "first")
    assert (final / "who").read_text() == "first" and (final / MARKER).is_file()
    assert sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")) == ["model"]


def test_a_complete_folder_is_kept_and_an_incomplete_one_replaced(tmp_path):
    final = tmp_path / "model"
    build(final, "half", complete=False)  # say, a crash between writing files and the marker
    build(final, "first")
    assert (final / "who").read_text() == "first"  # the incomplete one was replaced
    build(final, "second")  # finished after "first": dropped, the folder in place is kept
    assert (final / "who").read_text() == "first"


def test_a_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError), built_in_place(final, MARKER) as tmp:
        (tmp / "who").write_text("broken")
        raise RuntimeError("the build failed")
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
