"""One version, in one place: `align_recipes.__version__`. pyproject.toml reads it from there, CHANGELOG.md's
newest release is it, and an installed copy reports it (CONTRIBUTING.md, "Versions and tags")."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

import align_recipes

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_semantic_and_pyproject_reads_it_from_the_package():
    assert re.fullmatch(r"\d+\.\d+\.\d+", align_recipes.__version__)
    pyproject = (REPO / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml must not restate the version"
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M)
    assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"align_recipes.__version__"\s*\}', pyproject, re.M)


def test_the_changelog_s_newest_release_is_this_version():
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == align_recipes.__version__


def test_an_installed_copy_reports_the_same_version():
    try:
        installed = metadata.version("align-recipes")
    except metadata.PackageNotFoundError:
        pytest.skip("align-recipes is not installed in this environment")
    assert installed == align_recipes.__version__
