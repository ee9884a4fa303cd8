"""Readable results for a finished run: `report.md` and PNG plots of its metrics over steps.

`write_report(run_dir)` reads the run's `metrics.jsonl` and `summary.json` (and `eval.json` when
`align-recipes eval` wrote one) and writes into the run directory (`try_write_report` is the same
for the end of training, where a plotting problem must not fail the run):

    report.md              what ran, the held-out metrics before → after, every metric first → last, the plots
    plots/loss.png         losses (train, eval, policy, value)
    plots/preference.png   rewards/chosen vs rejected, margins, accuracies (DPO family);
                           accuracy, margin (reward models)
    plots/online_rl.png    reward, KL, entropy, lengths, per-function rewards (GRPO, PPO, SPO), and the
                           reward-hacking watch's held-out checks (`watch/<metric>`)
    plots/optimizer.png    learning rate, gradient norm
    plots/other.png        any other logged number (token accuracy, clip ratios, …)
    plots/task_metric.png  the held-out metrics before and after training, as bars; the after bar carries
                           the paired change's 95% interval (placed at before + change), a dashed line at
                           the before level, and the verdict

A figure appears only when the run logged something for it. `compare_runs(dirs, out)` overlays
several runs: one subplot per metric the runs share, in the same figures, plus a held-out-metric chart.
figures use matplotlib's object API and render to PNG (no display, no global backend).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from align_recipes import console, stats
from align_recipes.errors import RecipeError
from align_recipes.paths import read_json
from align_recipes.plan.generator import describe
from align_recipes.redaction import share_paths
from align_recipes.registry import ALGORITHMS
from align_recipes.run import harness
from align_recipes.run.hacking import report_lines as watch_lines
from align_recipes.run.manifest import share_roots
from align_recipes.run.rundir import METRICS, SUMMARY, RunDir, task_metrics

REPORT = "report.md"
PLOTS = "plots"
# Logged values that are bookkeeping, not curves worth a plot.
SKIP = {"step", "epoch", "total_flos", "num_tokens", "num_input_tokens_seen"}
PREFERENCE = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "accuracy",
    "margin",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
    "kl",
)
ONLINE_RL = (
    "reward",
    "reward_std",
    "kl",
    "entropy",
    "completions/",
    "response_length",
    "eos_rate",
    "rewards/",
    "non_score_reward",
    "kl_coef",
    "value",
    "baseline",
    "advantage",
    "frac_reward_zero_std",
    "approx_kl",
    "watch/",
)
# Curves drawn together in one subplot: (title, members).
PAIRS = (
    ("rewards/chosen vs rejected", ("rewards/chosen", "rewards/rejected")),
    ("logps/chosen vs rejected", ("logps/chosen", "logps/rejected")),
    ("logits/chosen vs rejected", ("logits/chosen", "logits/rejected")),
)
FIGURES = (
    ("loss", "losses"),
    ("preference", "preference: rewards, margins, accuracies"),
    ("online_rl", "online RL: reward, KL, entropy, lengths"),
    ("optimizer", "optimizer"),
    ("other", "other metrics"),
)


# --------------------------------------------------------------------------------------------- reading


def read_run(run_dir: str | Path) -> dict:
    """{"dir", "summary", "records", "eval"}; an error if the directory holds no run."""
    folder = RunDir(run_dir)
    run_dir = folder.path
    if not run_dir.is_dir():
        raise RecipeError(f"run directory '{run_dir}' not found", fix="pass the train.output_dir of a run")
    records, summary = folder.metrics(), folder.summary()
    if not records and not summary:
        raise RecipeError(
            f"'{run_dir}' holds no run (no {METRICS}, no {SUMMARY})",
            fix="pass the train.output_dir of a run that has started",
        )
    return {"dir": run_dir, "summary": summary, "records": records, "eval": read_json(run_dir / "eval.json")}


def _generates(summary: dict) -> bool:
    """Whether the run's algorithm samples while training (its plots lead with reward and KL)."""
    return getattr(ALGORITHMS.get(summary.get("algorithm")), "generates", False)


def series(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """metric → (steps, values), finite numbers only; the end-of-training summary row is left out."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        if "train_runtime" in record:
            continue
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in record.items():
            if key in SKIP or key.endswith(("_runtime", "_per_second")) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(value))
    return out


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith("/") and key.startswith(n)) for n in names)


def group_of(key: str, online: bool) -> str:
    base = key[5:] if key.startswith("eval_") else key
    if "loss" in base:
        return "loss"
    if base in ("learning_rate", "grad_norm"):
        return "optimizer"
    if base != "kl" and _matches(base, PREFERENCE):
        return "preference"
    if online and _matches(base, ONLINE_RL):
        return "online_rl"
    if _matches(base, PREFERENCE):
        return "preference"
    if _matches(base, ONLINE_RL) and base not in ("entropy",):
        return "online_rl"
    return "other"


def panels(keys: list[str], online: bool) -> dict[str, list[tuple[str, list[str]]]]:
    """figure name → [(subplot title, [metric keys drawn in it])], eval_X drawn with X."""
    present = set(keys)
    used: set[str] = set()
    figures: dict[str, list[tuple[str, list[str]]]] = {}
    for key in sorted(keys, key=_order):
        if key in used:
            continue
        if key.startswith("eval_") and key[5:] in present:
            continue  # drawn in its train counterpart's subplot
        members = [key]
        for pair_title, pair in PAIRS:
            if key in pair:
                members, title = [m for m in pair if m in present], pair_title
                break
        else:
            title = key
        members += [f"eval_{m}" for m in members if f"eval_{m}" in present]
        used.update(members)
        figures.setdefault(group_of(key, online), []).append((title, members))
    return figures


def _order(key: str) -> tuple[int, str]:
    first = (
        "loss",
        "reward",
        "rewards/chosen",
        "rewards/margins",
        "rewards/accuracies",
        "accuracy",
        "margin",
        "kl",
        "entropy",
    )
    return (first.index(key) if key in first else len(first), key)


# -------------------------------------------------------------------------------------------- drawing


class _Figures:
    """matplotlib's object API in place of pyplot: figures render to PNG without choosing a global
    backend, so a notebook that trains through align-recipes keeps its inline plots."""

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig) -> None:
        """Nothing to release: these figures are not registered with pyplot."""


def _pyplot():
    return _Figures


def _grid(plt, count: int, title: str):
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    fig.suptitle(title, fontsize=12)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(data: dict[str, tuple[list, list]], figures: dict, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    for name, title in FIGURES:
        subplots = figures.get(name)
        if not subplots:
            continue
        fig, axes = _grid(plt, len(subplots), title)
        for ax, (sub_title, members) in zip(axes, subplots):
            for key in members:
                xs, ys = data[key]
                marker = "o" if len(xs) < 25 or key.startswith("eval_") else None
                ax.plot(
                    xs,
                    ys,
                    marker=marker,
                    markersize=3,
                    linestyle="--" if key.startswith("eval_") else "-",
                    label=key,
                )
            if len(members) > 1:
                ax.legend(fontsize=7)
            _style(ax, sub_title)
        written.append(_save(plt, fig, out_dir / f"{name}.png"))
    return written


def plot_task_metric(runs: list[tuple[str, list[dict]]], path: Path) -> Path | None:
    """Bars: each held-out metric before and after training, per run. Where the run recorded the paired
    comparison, the after bar carries the 95% interval of the change, drawn at before + change (it reaches
    below the before bar's top exactly when the change is not significant), and the verdict under its label."""
    bars = [
        (t["name"] if len(runs) == 1 else label if len(tasks) == 1 else f"{label}\n{t['name']}", t)
        for label, tasks in runs
        for t in tasks
        if isinstance(t.get("before"), (int, float))
    ]
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(bars) + 2), 3.6))
    width = 0.38
    top, whiskers = 0.0, False
    for i, (_, task) in enumerate(bars):
        for offset, which, color in ((-width / 2, "before", "#9aa5b1"), (width / 2, "after", "#2f7ed8")):
            value = task.get(which)
            if not isinstance(value, (int, float)):
                continue
            ax.bar(i + offset, value, width, color=color, label=which if i == 0 else None)
            high = value
            reach = _interval_reach(task) if which == "after" else None
            if reach is not None:
                low, high = reach
                # the before level across the after bar: the whisker crosses it when the change is not significant
                ax.hlines(
                    task["before"], i, i + width, colors="white", linestyles="--", linewidth=1.2, zorder=3
                )
                ax.errorbar(
                    i + offset,
                    value,
                    yerr=[[value - low], [high - value]],
                    fmt="none",
                    ecolor="#1b1b1b",
                    capsize=4,
                    label=None if whiskers else "95% interval of the change",
                )
                whiskers = True
            ax.annotate(f"{value:.3f}", (i + offset, max(value, high)), ha="center", va="bottom", fontsize=8)
            top = max(top, value, high)
    labels = [f"{label}\n{t['verdict']}" if t.get("verdict") else label for label, t in bars]
    ax.set_xticks(range(len(bars)), labels, fontsize=8)
    names = list(dict.fromkeys(t["name"] for _, t in bars))
    ax.set_title(f"held-out: {', '.join(names)} (n={bars[0][1].get('n')})", fontsize=10)
    ax.set_ylim(0, max(1.0, top * 1.15) if top <= 1 else top * 1.15)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(plt, fig, path)


def _interval_reach(task: dict) -> tuple[float, float] | None:
    """(before + low, before + high): the paired change's interval where the after value stands."""
    interval, before = task.get("interval"), task.get("before")
    if (
        not interval
        or not isinstance(before, (int, float))
        or not isinstance(task.get("after"), (int, float))
    ):
        return None
    return before + interval[0], before + interval[1]


# ---------------------------------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _metric_table(data: dict[str, tuple[list, list]]) -> list[str]:
    lines = ["| metric | first | last | min | max | points |", "|---|---:|---:|---:|---:|---:|"]
    for key in sorted(data, key=_order):
        _, ys = data[key]
        lines.append(
            f"| `{key}` | {_fmt(ys[0])} | {_fmt(ys[-1])} | {_fmt(min(ys))} | {_fmt(max(ys))} | {len(ys)} |"
        )
    return lines


def _task_lines(tasks: list[dict]) -> list[str]:
    if not tasks:
        return ["No held-out metric (the recipe has no `evaluate:` section, or the run did not finish)."]
    lines = [
        "| metric | before | after | change | n | 95% interval of the change | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for task in tasks:
        after, before = task.get("after"), task.get("before")
        both = isinstance(after, (int, float)) and isinstance(before, (int, float))
        change = f"{after - before:+.4g}" if both else ""
        lines.append(
            f"| {task.get('name')} | {_fmt(before)} | {_fmt(after)} | {change} | {_fmt(task.get('n'))} | "
            f"{stats.interval_text(task.get('interval'), signed=True)} | {task.get('verdict') or ''} |"
        )
    if any(t.get("interval") for t in tasks):
        lines += [
            "",
            "The change is measured row by row on the same held-out rows before and after training; the "
            "verdict reads its 95% interval: rose or fell only when the interval excludes zero.",
        ]
    return lines


def _arrow(tasks: list[dict]) -> str:
    """'exact_match 0.790 → 0.820 (+0.030 [-0.012, +0.072], n=100, no significant change); …' for a comparison
    table cell (the two values alone for a run that did not finish)."""
    return "; ".join(
        stats.before_after(t)
        if isinstance(t.get("before"), (int, float)) and isinstance(t.get("after"), (int, float))
        else f"{t.get('name')} {_fmt(t.get('before'))} → {_fmt(t.get('after'))}"
        for t in tasks
    )


def _eval_lines(evaluation: dict) -> list[str]:
    metrics = evaluation.get("metrics") or {}
    if not metrics:
        return []
    lines = [
        "",
        "## Held-out evaluation (`eval.json`)",
        "",
        "| metric | value | 95% interval | n | data |",
        "|---|---:|---:|---:|---|",
    ]
    for name, result in metrics.items():
        lines.append(
            f"| {name} | {_fmt(result.get('value'))} | {stats.interval_text(result.get('interval'))} | "
            f"{_fmt(result.get('n'))} | `{result.get('data', evaluation.get('data', ''))}` |"
        )
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write report.md and plots/*.png into the run directory; returns the report's path."""
    run = read_run(run_dir)
    run_dir, summary = run["dir"], run["summary"]
    data = series(run["records"])
    online = _generates(summary)
    plots_dir = run_dir / PLOTS
    images = plot_run(data, panels(list(data), online), plots_dir)
    tasks = task_metrics(summary)
    bar = plot_task_metric([(run_dir.name, tasks)], plots_dir / "task_metric.png") if tasks else None

    algorithm, model = summary.get("algorithm", "?"), summary.get("model", "?")
    lines = [f"# {algorithm} · {model}", "", "| | |", "|---|---|"]
    for label, key in (
        ("algorithm", "algorithm"),
        ("recipe", "recipe"),
        ("model", "model"),
        ("adapter", "adapter"),
        ("profile", "profile"),
        ("status", "status"),
        ("steps", "steps"),
        ("runtime (s)", "runtime_s"),
        ("train loss", "train_loss"),
    ):
        if summary.get(key) is not None:
            lines.append(f"| {label} | {_fmt(summary[key])} |")
    if summary.get("generator"):  # which engine sampled the completions (plan/generator.py)
        lines.append(f"| generator | {describe(summary['generator'])} |")
    lines += ["", "## Held-out metrics", "", *_task_lines(tasks)]
    if bar:
        lines += ["", f"![held-out metrics]({PLOTS}/{bar.name})"]
    if summary.get("harness"):  # general ability beside the task metric (run/harness.py)
        lines += ["", *harness.table_lines(summary["harness"])[:-1]]
    lines += watch_lines(summary)
    lines += _eval_lines(run["eval"])
    lines += ["", "## Training metrics", ""]
    lines += _metric_table(data) if data else ["No metrics were logged (metrics.jsonl is empty)."]
    for image in images:
        lines += ["", f"![{image.stem}]({PLOTS}/{image.name})"]
    path = run_dir / REPORT
    path.write_text(share_paths("\n".join(lines), share_roots(run_dir)) + "\n")  # published with the run
    return path


def try_write_report(run_dir: str | Path) -> Path | None:
    """write_report for the end of a run: a failing plot prints a note instead of failing the run."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the model and summary are already saved
        console.note(f"no report.md for {run_dir}: {type(exc).__name__}: {exc}")
        return None


# ------------------------------------------------------------------------------------------- compare


def _labels(dirs: list[Path]) -> list[str]:
    labels = [d.name for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}:{label}" for i, label in enumerate(labels)]
    return labels


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Overlay several runs: one subplot per metric logged by at least two of them."""
    runs = [read_run(d) for d in run_dirs]
    labels = _labels([r["dir"] for r in runs])
    data = [series(r["records"]) for r in runs]
    shared = sorted({k for d in data for k in d if sum(k in other for other in data) >= 2}, key=_order)
    online = any(_generates(r["summary"]) for r in runs)
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS
    plt = _pyplot()
    images = []
    grouped: dict[str, list[str]] = {}
    for key in shared:
        grouped.setdefault(group_of(key, online), []).append(key)
    for name, title in FIGURES:
        keys = grouped.get(name)
        if not keys:
            continue
        fig, axes = _grid(plt, len(keys), f"{title}: {len(runs)} runs")
        for ax, key in zip(axes, keys):
            for label, d in zip(labels, data):
                if key in d:
                    xs, ys = d[key]
                    ax.plot(xs, ys, marker="o" if len(xs) < 25 else None, markersize=3, label=label)
            ax.legend(fontsize=7)
            _style(ax, key)
        images.append(_save(plt, fig, plots_dir / f"compare_{name}.png"))
    bar = plot_task_metric(
        [(lab, task_metrics(r["summary"])) for lab, r in zip(labels, runs)],
        plots_dir / "compare_task_metric.png",
    )

    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        "| run | algorithm | model | steps | runtime (s) | train loss | "
        "held-out: before → after (change [95% interval], n, verdict) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for label, run in zip(labels, runs):
        s = run["summary"]
        lines.append(
            f"| [{label}]({run['dir'].resolve()}) | {s.get('algorithm', '')} | {s.get('model', '')} | "
            f"{_fmt(s.get('steps'))} | {_fmt(s.get('runtime_s'))} | {_fmt(s.get('train_loss'))} | "
            f"{_arrow(task_metrics(s))} |"
        )
    if bar:
        lines += ["", f"![held-out metrics]({PLOTS}/{bar.name})"]
    lines += ["", f"Metrics logged by at least two runs: {len(shared)}."]
    for image in images:
        lines += ["", f"![{image.stem}]({PLOTS}/{image.name})"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT
    path.write_text("\n".join(lines) + "\n")
    return path


def report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """The `report` verb: one directory → its own report; several → a comparison (default ./report)."""
    if len(run_dirs) == 1 and out is None:
        return write_report(run_dirs[0])
    if len(run_dirs) == 1:
        path = write_report(run_dirs[0])
        return (
            _copy_report(Path(run_dirs[0]), Path(out))
            if Path(out).resolve() != path.parent.resolve()
            else path
        )
    return compare_runs(run_dirs, out or "report")


def _copy_report(run_dir: Path, out: Path) -> Path:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir / PLOTS, out / PLOTS, dirs_exist_ok=True)
    shutil.copy2(run_dir / REPORT, out / REPORT)
    return out / REPORT
