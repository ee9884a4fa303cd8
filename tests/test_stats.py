"""The statistics every before → after reads (align_recipes/stats.py), against table values and a naive
computation written out here."""

from __future__ import annotations

import math

import pytest

from align_recipes import stats

# Two-sided 95% t quantiles (t_{0.975, df}) from a printed table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 99: 1.984, 999: 1.962}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-3 if df == 3 else 1e-3)


def test_paired_difference_by_hand():
    # d = after - before = [1, 0, 1, 0, 1, 1, 0, 1]: mean 5/8, sample sd sqrt((5*(3/8)^2 + 3*(5/8)^2)/7)
    before = [0, 1, 0, 1, 0, 0, 1, 0]
    after = [1, 1, 1, 1, 1, 1, 1, 1]
    result = stats.compare(before, after)
    sd = math.sqrt((5 * (3 / 8) ** 2 + 3 * (5 / 8) ** 2) / 7)
    half = 2.365 * sd / math.sqrt(8)  # t_{0.975, 7} = 2.365
    assert result["n"] == 8 and result["before"] == 3 / 8 and result["after"] == 1.0
    assert result["difference"] == pytest.approx(5 / 8)
    assert result["interval"] == pytest.approx([5 / 8 - half, 5 / 8 + half], abs=1e-3)
    assert result["verdict"] == stats.ROSE


def test_verdicts_read_the_interval_not_the_point():
    # +0.02 over 100 rows where 12 rows gained and 10 lost: the interval straddles zero
    before = [0] * 12 + [1] * 10 + [1] * 78
    after = [1] * 12 + [0] * 10 + [1] * 78
    result = stats.compare(before, after)
    assert result["difference"] == pytest.approx(0.02)
    assert result["verdict"] == stats.FLAT
    assert stats.compare(after, before)["verdict"] == stats.FLAT
    fell = stats.compare([1] * 50, [0] * 10 + [1] * 40)
    assert fell["verdict"] == stats.FELL and fell["interval"][1] < 0


def test_identical_scores_are_no_change_and_one_row_has_no_interval():
    same = stats.compare([1, 0, 1], [1, 0, 1])
    assert same["difference"] == 0 and same["interval"] == [0, 0] and same["verdict"] == stats.FLAT
    single = stats.compare([0.0], [1.0])
    assert single["difference"] == 1.0 and single["interval"] is None and single["verdict"] is None
    assert stats.compare([], [])["n"] == 0


def test_unpaired_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        stats.compare([1, 0], [1])


def test_describe_is_one_short_text():
    text = stats.describe(stats.compare([0] * 10, [1, 1] + [0] * 8))
    # d = [1, 1, 0 x 8]: mean 0.2, sd sqrt(1.6 / 9) = 0.4216, se 0.1333, t_{0.975, 9} = 2.262: half 0.3016
    assert text == "+0.200 [-0.102, +0.502], n=10, no significant change"


def test_before_after_line_with_and_without_the_paired_fields():
    # d: 20 rows gained, 80 unchanged: mean 0.2, sd sqrt(16/99), se 0.4/sqrt(99) = 0.04020, t_{0.975,99} 1.984
    before = [0] * 20 + [1] * 70 + [0] * 10
    after = [1] * 20 + [1] * 70 + [0] * 10
    entry = {"name": "exact_match", **stats.compare(before, after)}
    assert stats.before_after(entry) == "exact_match 0.700 → 0.900 (+0.200 [+0.120, +0.280], n=100, rose)"
    old = {"name": "exact_match", "before": 0.79, "after": 0.82, "n": 100}  # a summary written before them
    assert stats.before_after(old) == "exact_match 0.790 → 0.820"


def test_change_and_interval_cells():
    assert stats.interval_text([0.7444, 0.8956]) == "[0.744, 0.896]"
    assert stats.interval_text([-0.0123, 0.0721], signed=True) == "[-0.012, +0.072]"
    assert stats.interval_text(None) == ""
    assert stats.change_text({"difference": 0.03, "interval": [-0.012, 0.072]}) == "+0.030 [-0.012, +0.072]"
    assert stats.change_text({"before": 0.5, "after": 0.75}) == "+0.250"  # older summaries: the bare change
    assert stats.change_text({"before": 0.5, "after": None}) == ""
