"""The test lanes add up to the whole suite and CI runs them all: `make test` (the README's test command) and
`make test-scale` split the suite by marker with nothing left out, and `.ci/run` calls every lane the Makefile
defines. A new lane or marker that CI would silently skip fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def make_recipe(target: str) -> str:
    """The command lines of a Makefile target, continuation lines joined."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, flags=re.M)
    assert match, f"no `{target}` target in the Makefile"
    return match.group(1)


def marker_expression(target: str) -> str:
    """pytest's `-m`: the word after the last `-m` (the first is python's `-m pytest`)."""
    words = shlex.split(make_recipe(target))
    return words[len(words) - words[::-1].index("-m")]


def lane_markers() -> set[str]:
    """The markers pyproject.toml registers for `make test-scale`."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    return {line.split(":")[0] for line in markers if "`make test-scale`" in line}


def test_make_test_and_the_scale_lane_split_the_suite_by_marker_with_nothing_left_out():
    markers = lane_markers()
    assert markers == {"distributed", "real_shape"}
    assert marker_expression("test") == " and ".join(f"not {m}" for m in sorted(markers))
    assert marker_expression("test-scale") == " or ".join(sorted(markers))


def test_ci_runs_the_readme_test_command_and_every_lane():
    # `.ci/run` times each step: `timed make test`
    ci = [line.strip().removeprefix("timed ") for line in (REPO / ".ci" / "run").read_text().splitlines()]
    readme = (REPO / "README.md").read_text()
    tests_block = readme.split("## Tests", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert tests_block == "make test" and tests_block in ci
    lanes = set(re.findall(r"^(test-[\w-]+|lint):", (REPO / "Makefile").read_text(), flags=re.M))
    assert lanes == {"lint", "test-scale", "test-vllm"}
    for lane in lanes:
        assert f"make {lane}" in ci, f".ci/run does not run `make {lane}`"
