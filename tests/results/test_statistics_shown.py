"""The paired comparison of held-out metrics where results are read: report.md (its table, the interval
whiskers on the task-metric plot, the verdict in the comparison of several runs) and `eval` (a value with
its 95% interval). Synthetic run folders with hand-computed numbers: no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_recipes.results import report
from align_recipes.results.evaluate import result_line, with_interval

# exact_match on 100 rows, 20 gained, none lost: d mean 0.2, se 0.4 / sqrt(99), t_{0.975,99} 1.984
ROSE = {
    "name": "exact_match",
    "before": 0.7,
    "after": 0.9,
    "n": 100,
    "difference": 0.2,
    "interval": [0.2 - 0.07976, 0.2 + 0.07976],
    "confidence": 0.95,
    "verdict": "rose",
    "after_interval": [0.8405, 0.9595],
}
FLAT = {
    **ROSE,
    "after": 0.72,
    "difference": 0.02,
    "interval": [-0.0734, 0.1134],
    "verdict": "no significant change",
}


def fake_run(directory: Path, tasks: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n')
    summary = {"algorithm": "sft", "model": "builtin:tiny-qwen2", "status": "complete", "task_metrics": tasks}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def test_report_tables_the_interval_and_verdict_and_plots_the_whiskers(tmp_path, monkeypatch):
    figures = []
    save = report._save

    def keep(plt, fig, path):
        figures.append((path.name, fig))
        return save(plt, fig, path)

    monkeypatch.setattr(report, "_save", keep)
    run = fake_run(tmp_path / "sft", [ROSE])
    text = report.write_report(run).read_text()
    assert "| exact_match | 0.7 | 0.9 | +0.2 | 100 | [+0.120, +0.280] | rose |" in text
    assert "95% interval" in text and "excludes zero" in text
    assert (run / "plots" / "task_metric.png").stat().st_size > 2000

    from matplotlib.container import ErrorbarContainer

    (fig,) = [f for name, f in figures if name == "task_metric.png"]
    ax = fig.axes[0]
    (whisker,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segment,) = whisker.lines[2][0].get_segments()
    # drawn at before + the change's interval: 0.7 + 0.1202 and 0.7 + 0.2798
    assert [y for _, y in segment] == pytest.approx([0.8202, 0.9798], abs=1e-4)
    assert any("rose" in t.get_text() for t in ax.get_xticklabels())


def test_report_of_an_older_summary_has_no_whiskers(tmp_path):
    run = fake_run(tmp_path / "old", [{"name": "exact_match", "before": 0.5, "after": 0.75, "n": 8}])
    text = report.write_report(run).read_text()
    assert "| exact_match | 0.5 | 0.75 | +0.25 | 8 |  |  |" in text and "excludes zero" not in text


def test_the_comparison_of_runs_shows_each_verdict(tmp_path):
    a = fake_run(tmp_path / "a", [ROSE])
    b = fake_run(tmp_path / "b", [FLAT])
    text = report.compare_runs([a, b], tmp_path / "cmp").read_text()
    assert "exact_match 0.700 → 0.900 (+0.200 [+0.120, +0.280], n=100, rose)" in text
    assert "exact_match 0.700 → 0.720 (+0.020 [-0.073, +0.113], n=100, no significant change)" in text
    assert (tmp_path / "cmp" / "plots" / "compare_task_metric.png").is_file()


def test_eval_values_carry_n_and_their_interval():
    # scores 1 x5, 0: mean 5/6, variance (5/36 + 25/36) / 5 = 1/6, se 1/6, t_{0.975,5} = 2.571
    result = with_interval([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    assert result["value"] == pytest.approx(5 / 6) and result["n"] == 6 and result["confidence"] == 0.95
    assert result["interval"] == pytest.approx([5 / 6 - 2.571 / 6, 5 / 6 + 2.571 / 6], abs=1e-3)
    assert with_interval([1.0])["interval"] is None  # one row: no interval
    assert result_line("exact_match", {"value": 0.5, "n": 1, "data": "d"}) == (
        "exact_match                0.5000  (n=1, data d)"
    )
    # 80 of 100 rows: se sqrt(0.8 * 0.2 / 99) = 0.040202, t_{0.975,99} 1.984: half 0.079761
    eighty = with_interval([1.0] * 80 + [0.0] * 20)
    assert eighty["interval"] == pytest.approx([0.720239, 0.879761], abs=1e-4)
    assert result_line("exact_match", {**eighty, "data": "data/eval.jsonl"}) == (
        "exact_match                0.8000  95% interval [0.7202, 0.8798]  (n=100, data data/eval.jsonl)"
    )
