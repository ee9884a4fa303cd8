"""report.md and plots from a run's metrics.jsonl / summary.json (synthetic runs: no training, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.results import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(directory: Path, algorithm: str, records: list[dict], task: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    lines.append(json.dumps({"step": records[-1]["step"], "train_runtime": 1.0, "train_loss": 0.5}))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "algorithm": algorithm,
        "model": "builtin:tiny-qwen2",
        "status": "complete",
        "steps": records[-1]["step"],
        "runtime_s": 1.0,
        "train_loss": 0.5,
        "task_metric": task,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def dpo_records(n: int = 8, shift: float = 0.0) -> list[dict]:
    return [
        {
            "step": 5 * (i + 1),
            "epoch": i / n,
            "loss": 0.69 - 0.05 * i + shift,
            "grad_norm": 1.0,
            "learning_rate": 1e-3,
            "rewards/chosen": 0.1 * i,
            "rewards/rejected": -0.1 * i,
            "rewards/margins": 0.2 * i,
            "rewards/accuracies": min(1.0, 0.5 + 0.1 * i),
            "logps/chosen": -10.0,
            "logps/rejected": -12.0,
            "num_tokens": 100.0 * i,
        }
        for i in range(n)
    ]


def grpo_records(n: int = 6) -> list[dict]:
    return [
        {
            "step": i + 1,
            "loss": 0.01,
            "reward": 0.1 * i,
            "reward_std": 0.2,
            "kl": 0.01 * i,
            "entropy": 2.0 - 0.1 * i,
            "completions/mean_length": 12.0,
            "rewards/exact_match/mean": 0.1 * i,
            "clip_ratio/low_mean": 0.0,
            "learning_rate": 1e-5,
            "grad_norm": 0.5,
        }
        for i in range(n)
    ]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_dpo_run_gets_loss_preference_and_task_plots(tmp_path):
    run = fake_run(
        tmp_path / "dpo",
        "dpo",
        dpo_records(),
        {"name": "preference_accuracy", "before": 0.4, "after": 0.9, "n": 50},
    )
    path = report.write_report(run)
    text = path.read_text()
    for name in ("loss", "preference", "optimizer", "task_metric"):
        assert _is_png(run / "plots" / f"{name}.png"), name
        assert f"plots/{name}.png" in text
    assert "| preference_accuracy | 0.4 | 0.9 | +0.5 | 50 |" in text
    assert "`rewards/margins`" in text and "train_runtime" not in text


def test_metric_grouping():
    dpo = report.panels(list(report.series(dpo_records())), online=False)
    titles = {t for t, _ in dpo["preference"]}
    assert "rewards/chosen vs rejected" in titles and "rewards/margins" in titles
    assert ("rewards/chosen vs rejected", ["rewards/chosen", "rewards/rejected"]) in dpo["preference"]
    grpo = report.panels(list(report.series(grpo_records())), online=True)
    rl = {t for t, _ in grpo["online_rl"]}
    assert {"reward", "kl", "entropy", "completions/mean_length", "rewards/exact_match/mean"} <= rl
    assert (
        report.group_of("accuracy", False) == "preference"
        and report.group_of("margin", False) == "preference"
    )
    assert report.group_of("value_loss", True) == "loss" and report.group_of("policy_loss", True) == "loss"
    assert report.group_of("mean_token_accuracy", False) == "other"
    assert report.group_of("entropy", False) == "other"  # SFT's token entropy is not an RL curve


def test_eval_rows_are_overlaid_on_their_train_metric(tmp_path):
    records = dpo_records(4) + [
        {"step": 20, "eval_loss": 0.4, "eval_runtime": 1.0, "eval_rewards/margins": 0.5}
    ]
    figures = report.panels(list(report.series(records)), online=False)
    assert ("loss", ["loss", "eval_loss"]) in figures["loss"]
    assert ("rewards/margins", ["rewards/margins", "eval_rewards/margins"]) in figures["preference"]
    assert "eval_runtime" not in report.series(records)


def test_grpo_run_gets_online_rl_figure(tmp_path):
    run = fake_run(tmp_path / "grpo", "grpo", grpo_records())
    report.write_report(run)
    assert _is_png(run / "plots" / "online_rl.png")
    assert not (run / "plots" / "preference.png").exists()
    assert "No held-out metric" in (run / "report.md").read_text()


def test_compare_overlays_shared_metrics(tmp_path):
    a = fake_run(
        tmp_path / "a" / "dpo",
        "dpo",
        dpo_records(),
        {"name": "preference_accuracy", "before": 0.4, "after": 0.9, "n": 50},
    )
    b = fake_run(
        tmp_path / "b" / "dpo",
        "dpo",
        dpo_records(6, shift=0.1),
        {"name": "preference_accuracy", "before": 0.4, "after": 0.7, "n": 50},
    )
    c = fake_run(tmp_path / "grpo", "grpo", grpo_records())
    assert main(["report", str(a), str(b), str(c), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "a/dpo" in text and "b/dpo" in text and "grpo" in text  # same folder names get their parent too
    for name in ("compare_loss", "compare_preference", "compare_task_metric"):
        assert _is_png(tmp_path / "cmp" / "plots" / f"{name}.png"), name
    assert not (tmp_path / "cmp" / "plots" / "compare_online_rl.png").exists()  # only one run logs reward


def test_report_verb_single_run_and_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "sft", "sft", [{"step": s, "loss": 3.0 / s} for s in range(1, 6)])
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert _is_png(tmp_path / "elsewhere" / "plots" / "loss.png")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_interrupted_run_reports_the_before_value(tmp_path):
    run = fake_run(tmp_path / "cut", "sft", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": float("nan")}])
    summary = json.loads((run / "summary.json").read_text())
    summary.update(
        status="interrupted",
        task_metric=None,
        task_metric_before={"name": "exact_match", "value": 0.1, "n": 10},
    )
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "lo')
    text = report.write_report(run).read_text()
    assert "| status | interrupted |" in text and "| exact_match | 0.1 |" in text


@pytest.mark.slow
def test_report_of_a_real_run(sft_tiny_run):
    path = report.write_report(sft_tiny_run)
    assert _is_png(sft_tiny_run / "plots" / "loss.png")
    assert "exact_match" in path.read_text()


@pytest.fixture(scope="module")
def sft_tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "sft"
    assert (
        main(
            [
                "train",
                "recipes/tiny/sft.yaml",
                f"train.output_dir={out}",
                "--profile",
                "cpu",
                "train.max_steps=4",
                "train.logging_steps=1",
                "evaluate.limit=4",
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow
def test_train_no_report_skips_the_plots_and_says_how_to_make_them(tmp_path, capsys, repo_cwd):
    out = tmp_path / "sft"
    assert (
        main(
            [
                "train",
                "recipes/tiny/sft.yaml",
                f"train.output_dir={out}",
                "--profile",
                "cpu",
                "--no-report",
                "model.name_or_path=builtin:tiny-qwen2",
                "train.max_steps=3",
                "train.logging_steps=1",
                "evaluate=null",
            ]
        )
        == 0
    )
    assert (out / "summary.json").is_file() and (out / "metrics.jsonl").is_file()
    assert not (out / "report.md").exists() and not (out / "plots").exists()
    assert f"plots: align-recipes report {out}" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and _is_png(out / "plots" / "loss.png")
