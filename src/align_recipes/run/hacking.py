"""The reward-hacking watch: the proxy reward rises while the task it stands for gets worse.

An algorithm that samples while it trains (registry trait `generates`) climbs a proxy: its reward
functions or reward model, scored on its own samples (`reward` in metrics.jsonl; online DPO logs
`objective/scores`). A policy can climb it by exploiting the proxy instead of doing the task (Gao et
al. 2022, "Scaling Laws for Reward Model Overoptimization"). Every `evaluate.watch_every` steps the
watch answers the first `evaluate.watch_rows` prompts of evaluate.data greedily, scores them by the
held-out metric (exact_match when the data has answers, else reward), logs that to metrics.jsonl as
`watch/<metric>`, and compares the two trends (`HackingDetector`, which needs no torch):

- the proxy rose: the mean of its last two logged values exceeds the mean of its first two by more
  than Z·σ, σ the noise of one logged value estimated from the series itself (von Neumann: half the
  mean squared difference of neighbours, which a trend inflates only by its step between logs). The difference of
  two means of two values has standard error σ. Four logged values are needed.
- the held-out metric fell: below its value on the same rows before training by more than Z standard
  errors of that value: sqrt(p(1-p)/n) for right/wrong scores, p smoothed to (k+1)/(n+2) so an
  all-right start still has noise; the sample deviation over sqrt(n) for rewards.
- or, the second signal, the proxy's own ranking of fresh samples fell. Where the rows have answers,
  each check also scores the policy's *wrong* greedy answers and the right ones with the run's reward (its
  reward model or functions): `ranking` is the share of wrong answers the proxy scores below the right one.
  A policy that has found answers its reward model prefers to the truth lowers it. It fell when it is below
  its value before training by more than Z standard errors of the difference of the two shares (only with
  at least `MIN_RANKED` wrong answers in each).
- both at `CONSECUTIVE` checks in a row raise the warning, once, naming the first of them. It stands
  after that (the model saw it); `ongoing` says whether the last check still showed it, and the warning
  line says when the metric has recovered since (it can: the tiny RLHF flow dips for a few checks, then
  ends above its start).

What it does then is `evaluate.on_hacking`:

- `warn` (default): the warning line, live and in the summary; training goes on.
- `stop`: also saves a checkpoint of the step it warned at and ends training there; the run finishes as
  usual (final model, measurement after) with summary.json `status: stopped_hacking`.
- `rollback`: restores the policy of the watch's best check before the warning (the highest held-out
  metric so far, the start model included) and ends training; the run's final model is that one, so its
  held-out metric on the watched rows is no lower than at the step the watch warned. The watch keeps that
  policy itself, in `<output_dir>/watch-best/` (`trainer.save_model`, overwritten at each new best),
  because the run's checkpoints need not fall on the watch's check steps and `save_total_limit` may have
  rotated the good one out. It stops rather than continuing with a stronger KL: the optimizer state and
  schedule belong to the fallen policy, and a changed recipe is a new run (the warning lists the fixes).

It is off for algorithms that do not generate, without an evaluate: section or a metric read from
generations, and for sharded runs (a check would generate on rank 0 alone). `stop` and `rollback` act
in one-process runs only (the watch lives on rank 0; stopping one rank of several would hang the others):
elsewhere they warn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Z = 2.0  # standard errors a change must exceed
CONSECUTIVE = 2  # suspicious checks in a row before warning (one noisy check does not flap)
WINDOW = 2  # logged proxy values averaged at each end
CHECKS_PER_RUN = 10  # evaluate.watch_every: null
BEST_DIR = "watch-best"  # on_hacking: rollback keeps the best-checked policy here
STOPPED = "stopped_hacking"  # summary.json status of a run the watch ended
PROXY_KEYS = ("reward", "objective/scores")  # the sampled reward, as the trainers log it
WATCHED = ("exact_match", "reward")  # held-out metrics read from greedy answers, the independent one first
MIN_RANKED = 5  # wrong answers needed before the proxy's ranking of them counts as a signal


def noise_of_series(values: list[float]) -> float:
    """σ of one value around a smooth trend: sqrt(mean((x[i+1] - x[i])²) / 2) (von Neumann)."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    return math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2) if diffs else 0.0


def standard_error(scores: list[float]) -> float:
    """Standard error of the mean of `scores`: binomial with p=(k+1)/(n+2) for 0/1 scores, else s/sqrt(n)."""
    n = len(scores)
    if n < 2:
        return math.inf
    if all(s in (0.0, 1.0) for s in scores):
        p = (sum(scores) + 1) / (n + 2)
        return math.sqrt(p * (1 - p) / n)
    mean = sum(scores) / n
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


@dataclass
class HackingDetector:
    """Feed it logged proxy values (`add_proxy`) and held-out checks (`check`); `warning` is set once the
    proxy has risen while the held-out metric (or the proxy's ranking of fresh samples) fell at `consecutive`
    checks in a row."""

    metric: str  # the held-out metric watched
    before: float  # its value on the watched rows before training
    standard_error: float  # of `before`
    ranking_before: list[float] | None = (
        None  # 1.0 per wrong answer of the start policy that the proxy ranked right
    )
    proxy_name: str = "reward"
    z: float = Z
    consecutive: int = CONSECUTIVE
    proxy: list[tuple[int, float]] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    warning: dict | None = None
    _streak: list[dict] = field(default_factory=list)

    def add_proxy(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.proxy.append((step, float(value)))

    def proxy_rise(self) -> tuple[float, float] | None:
        """(rise of the last WINDOW values' mean over the first WINDOW's, its margin Z·σ), None if too few."""
        values = [v for _, v in self.proxy]
        if len(values) < 2 * WINDOW:
            return None
        rise = sum(values[-WINDOW:]) / WINDOW - sum(values[:WINDOW]) / WINDOW
        return rise, self.z * noise_of_series(values)

    def ranking_fell(self, ranking: list[float] | None) -> bool:
        """Whether the proxy ranks fewer of the policy's wrong answers below the right one than before training,
        beyond Z standard errors of the difference (each share's binomial error, `standard_error`)."""
        before = self.ranking_before
        if not before or not ranking or min(len(before), len(ranking)) < MIN_RANKED:
            return False
        margin = self.z * math.hypot(standard_error(before), standard_error(ranking))
        return sum(before) / len(before) - sum(ranking) / len(ranking) > margin

    def check(self, step: int, held_out: float, ranking: list[float] | None = None) -> bool:
        """Record one held-out measurement (and the proxy's ranking of this policy's wrong answers, 1.0 where it
        scored the right answer higher); True when it raises the warning."""
        rising = self.proxy_rise()
        fall_margin = self.z * self.standard_error
        rose = rising is not None and rising[0] > rising[1]
        fell = self.before - held_out > fall_margin
        ranking_fell = self.ranking_fell(ranking)
        record = {
            "step": step,
            "held_out": held_out,
            "ranking": sum(ranking) / len(ranking) if ranking else None,
            "proxy_rise": rising and rising[0],
            "proxy_margin": rising and rising[1],
            "fall_margin": fall_margin,
            "ranking_fell": ranking_fell,
            "suspicious": rose and (fell or ranking_fell),
        }
        self.checks.append(record)
        self._streak = [*self._streak, record] if record["suspicious"] else []
        if self.warning is not None:
            held = self.warning["held_out"]
            self.warning["ongoing"] = record["suspicious"]
            held["last"], held["lowest"] = held_out, min(held["lowest"], held_out)
            self.warning["proxy"]["last"] = self._proxy_mean(-WINDOW)
            if "ranking" in self.warning and record["ranking"] is not None:
                self.warning["ranking"]["last"] = record["ranking"]
            return False
        if len(self._streak) < self.consecutive:
            return False
        self.warning = {
            "since_step": self._streak[0]["step"],
            "at_step": step,
            "ongoing": True,
            "proxy": {
                "name": self.proxy_name,
                "first": self._proxy_mean(0),
                "last": self._proxy_mean(-WINDOW),
            },
            "held_out": {
                "name": self.metric,
                "before": self.before,
                "last": held_out,
                "lowest": min(c["held_out"] for c in self._streak),
                "margin": fall_margin,
            },
        }
        if self.ranking_before and record["ranking"] is not None:
            self.warning["ranking"] = {
                "before": sum(self.ranking_before) / len(self.ranking_before),
                "last": record["ranking"],
                "fell": any(c["ranking_fell"] for c in self._streak),
            }
        return True

    def _proxy_mean(self, start: int) -> float:
        values = [v for _, v in self.proxy]
        part = values[start : start + WINDOW] if start >= 0 else values[start:]
        return sum(part) / len(part)


def likely_fixes(args, reward_model: bool) -> list[str]:
    """What usually stops it, most likely first, in the recipe's own keys."""
    kl = "train.kl_coef" if hasattr(args, "kl_coef") else "train.beta"
    better = (
        "a better reward model: more or cleaner preference pairs, trained until its held-out preference "
        "accuracy is high (check it on this policy's samples)"
        if reward_model
        else "a reward that cannot be gamed: check what the reward functions pay for"
    )
    return [
        f"lower train.learning_rate (now {args.learning_rate:g})",
        f"a stronger KL penalty to the reference ({kl}, now {getattr(args, kl.split('.')[1], 0):g})",
        better,
    ]


def warning_line(warning: dict) -> str:
    """One line: since when, the proxy's rise, and each signal that fell: the metric (to its lowest, and where
    it ended when that differs: a policy can recover, and the line must not read "fell" to a value above the
    start) and the proxy's ranking of the policy's wrong answers."""
    proxy, held, ranking = warning["proxy"], warning["held_out"], warning.get("ranking")
    lowest = held.get("lowest", held["last"])
    signals = []
    if held["before"] - lowest > held["margin"]:
        signal = f"held-out {held['name']} fell {held['before']:.3f} → {lowest:.3f}"
        if not warning.get("ongoing") and held["before"] - held["last"] <= held["margin"]:
            signal += f"; it recovered ({held['last']:.3f} at the last check)"
        elif held["last"] != lowest:
            signal += f" ({held['last']:.3f} at the last check)"
        signals.append(signal)
    if ranking and ranking.get("fell"):
        signals.append(
            f"the {proxy['name']} ranked fewer of the policy's wrong held-out answers below the right one "
            f"({ranking['before']:.0%} → {ranking['last']:.0%})"
        )
    line = (
        f"reward hacking suspected since step {warning['since_step']}: sampled {proxy['name']} rose "
        f"{proxy['first']:.3g} → {proxy['last']:.3g} while " + " and ".join(signals)
    )
    if ranking and not ranking.get("fell"):
        line += (
            f"; the {proxy['name']} still ranks {ranking['last']:.0%} of the policy's wrong held-out answers "
            f"below the right one (before training {ranking['before']:.0%})"
        )
    return line


def report_lines(summary: dict) -> list[str]:
    """report.md's section on the watch ([] for a run it did not watch)."""
    watch, warning = summary.get("reward_watch"), summary.get("reward_hacking")
    if not isinstance(watch, dict):
        return []
    lines = [
        "",
        "## Reward-hacking watch",
        "",
        f"Held-out {watch.get('metric')} on {watch.get('rows')} rows of evaluate.data every {watch.get('every')} "
        f"steps (before training {watch.get('before', float('nan')):.3f}; plotted as "
        f"`watch/{watch.get('metric')}` beside the reward), {len(watch.get('checks') or [])} checks.",
        "",
    ]
    if watch.get("ranking_before") is not None:
        lines += [
            f"At each check the reward also scored the policy's wrong answers against the right ones "
            f"(`watch/ranking`, the share it ranks right; before training {watch['ranking_before']:.0%}).",
            "",
        ]
    if not isinstance(warning, dict):
        return lines + [
            "No sign of reward hacking: the held-out metric never fell beyond its noise while the sampled "
            "reward rose."
        ]
    state = "still so at the last check" if warning.get("ongoing") else "no longer so at the last check"
    lines += [
        f"**Warning: {warning_line(warning)}** (fall margin {warning['held_out']['margin']:.3f}, "
        f"{Z:g} standard errors; {state}).",
        "",
    ]
    if warning.get("acted"):
        lines += [f"The watch {action_line(warning['acted'])}.", ""]
    lines += [
        "Likely fixes:",
        "",
    ]
    return lines + [f"- {fix}" for fix in warning.get("fixes") or []]


def action_line(acted: dict) -> str:
    """What `on_hacking` did, in one sentence."""
    if acted["on_hacking"] == "rollback":
        return (
            f"rolled back to the policy of step {acted['rolled_back_to_step']} (held-out {acted['metric']} "
            f"{acted['held_out_restored']:.3f}, the watch's best check before the fall) and stopped at step "
            f"{acted['stopped_at_step']} (evaluate.on_hacking: rollback)"
        )
    return f"stopped at step {acted['stopped_at_step']} (evaluate.on_hacking: stop)"


def run_status(summary_fields: dict) -> str:
    """summary.json's status: `stopped_hacking` when the watch ended the run, else `complete`."""
    warning = summary_fields.get("reward_hacking")
    return STOPPED if isinstance(warning, dict) and warning.get("acted") else "complete"


def done_note(summary: dict) -> str:
    """The `done:` line's addition ("" when the watch saw nothing)."""
    warning = summary.get("reward_hacking")
    if not isinstance(warning, dict):
        return ""
    acted = f"; {action_line(warning['acted'])}" if warning.get("acted") else ""
    return f" · ⚠ {warning_line(warning)}{acted} (fixes: summary.json reward_hacking)"
