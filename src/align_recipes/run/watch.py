"""The reward-hacking watch during training: `RewardWatch` scores the watched rows, feeds
`hacking.HackingDetector` and acts as `evaluate.on_hacking` says (see `run.hacking`'s docstring for the
rules). The Trainer reaches it through `callbacks.WatchHooks`; importing this module imports no torch.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from align_recipes.run.hacking import (
    BEST_DIR,
    CHECKS_PER_RUN,
    PROXY_KEYS,
    WATCHED,
    HackingDetector,
    action_line,
    likely_fixes,
    standard_error,
    warning_line,
)


def watch_summary(trainer) -> dict:
    """The summary.json fields of this trainer's watch ({} without one)."""
    watch = next(
        (cb for cb in trainer.callback_handler.callbacks if getattr(cb, "is_reward_watch", False)), None
    )
    return watch.summary() if watch is not None else {}


def reward_watch(plan, trainer, metrics_path, say: Callable[[str], None] = print):
    """The watch's TrainerCallback for this run, or None where it does not apply (see the module docstring)."""
    from align_recipes.run import sharded
    from align_recipes.run.rundir import is_main_process

    section = plan.evaluate
    metric = next((m for m in WATCHED if section is not None and m in section.metrics), None)
    if not plan.algorithm.generates or metric is None or section.watch_every == 0 or not is_main_process():
        return None
    if sharded.is_sharded(trainer):
        say(
            "note: the reward-hacking watch is off for sharded runs (a check would generate on one rank alone)"
        )
        return None
    from align_recipes.plan.sections import METRIC_KINDS
    from align_recipes.run.measure import held_out_rows, run_reward

    rows = held_out_rows(plan, METRIC_KINDS[metric])[: section.watch_rows]
    action = section.on_hacking
    if action != "warn" and trainer.args.world_size > 1:
        say(
            f"note: evaluate.on_hacking: {action} acts in one-process runs only (the watch runs on rank 0, and "
            "stopping one rank of several would hang the others); this run warns"
        )
        action = "warn"
    return (
        _callback(plan, metric, rows, run_reward(plan, trainer), metrics_path, say, trainer, action)
        if len(rows) >= 2
        else None
    )


def _callback(
    plan,
    metric: str,
    rows: list[dict],
    reward: tuple[list, list[float]],
    metrics_path,
    say,
    trainer=None,
    action: str = "warn",
):
    from align_recipes.run.callbacks import WatchHooks

    return WatchHooks(RewardWatch(plan, metric, rows, reward, metrics_path, say, trainer, action))


class RewardWatch:
    """The watch during training: scores the watched rows at the start and every `every` steps, feeds the
    detector, acts as `evaluate.on_hacking` says; the Trainer reaches it through `callbacks.WatchHooks`."""

    is_reward_watch = True

    def __init__(self, plan, metric, rows, reward, metrics_path, say, trainer=None, action="warn"):
        self.metric, self.rows, self.reward = metric, rows, reward
        self.metrics_path, self.say, self.trainer, self.action = metrics_path, say, trainer, action
        self.section = plan.evaluate
        self.uses_reward_model = bool(plan.train.get("reward_model_path")) or any(
            isinstance(r, dict) and "model" in r for r in plan.rewards or []
        )
        self.detector: HackingDetector | None = None
        self.every, self.last_check, self.fixes = 0, 0, []
        self.best: tuple[int, float] | None = None  # rollback: (step, held-out value) of the kept policy
        self.acted: dict | None = None

    def scores(self, model, tokenizer) -> tuple[list[float], list[float] | None]:
        """The watched rows' held-out scores, and (with answers) the proxy's ranking of the wrong ones: 1.0 where
        it scores the right answer above the policy's."""
        from align_recipes.run import measure

        rows, reward = self.rows, self.reward
        completions = measure.generate(
            model, tokenizer, [r["prompt"] for r in rows], self.section.max_new_tokens
        )
        if self.metric == "reward":
            return measure.row_rewards(reward, rows, completions), None
        right = measure.answer_matches(completions, rows)
        wrong = [i for i, r in enumerate(right) if not r]
        if not wrong:
            return right, None
        wrong_rows = [rows[i] for i in wrong]
        # One call scores both sides (a reward model reads them in one forward): the policy's, then the right ones.
        scored = measure.row_rewards(
            reward,
            wrong_rows + wrong_rows,
            [completions[i] for i in wrong] + [str(r["answer"]) for r in wrong_rows],
        )
        theirs, truth = scored[: len(wrong)], scored[len(wrong) :]
        return right, [float(t > w) for t, w in zip(truth, theirs)]

    def keep_best(self, step: int, value: float) -> None:
        """rollback: keep this policy as the one to return to (overwrites the previous best)."""
        folder = Path(self.trainer.args.output_dir) / BEST_DIR
        partial = folder.with_name(BEST_DIR + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.trainer.save_model(str(partial))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        self.best = (step, value)

    def act(self, state, control) -> None:
        """on_hacking stop / rollback, once the warning is raised."""
        step = state.global_step
        self.acted = {"on_hacking": self.action, "stopped_at_step": step, "metric": self.metric}
        control.should_training_stop = True
        if self.action == "stop":
            control.should_save = True  # the checkpoint of the step it stopped at
            self.say(f"stopping: {action_line(self.acted)}; a checkpoint of step {step} is saved")
            return
        self.trainer._load_from_checkpoint(str(Path(self.trainer.args.output_dir) / BEST_DIR))
        control.should_save = False  # a checkpoint now would pair the restored weights with a later optimizer
        self.acted.update(rolled_back_to_step=self.best[0], held_out_restored=self.best[1])
        self.say(f"rolling back: {action_line(self.acted)}")

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        start, ranking = self.scores(model, processing_class)
        self.detector = HackingDetector(self.metric, sum(start) / len(start), standard_error(start), ranking)
        if self.action == "rollback" and self.best is None:
            self.keep_best(state.global_step, self.detector.before)
        logging = (
            args.logging_steps if args.logging_steps >= 1 else math.ceil(args.logging_steps * state.max_steps)
        )
        self.every = self.section.watch_every or int(logging) * max(
            1, round(state.max_steps / CHECKS_PER_RUN / logging)
        )
        self.last_check = state.global_step
        self.fixes = likely_fixes(args, self.uses_reward_model)

    def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kwargs):
        from align_recipes.run.rundir import append_metrics

        proxy = next((k for k in PROXY_KEYS if isinstance((logs or {}).get(k), (int, float))), None)
        if self.detector is None or proxy is None:
            return
        self.detector.proxy_name = proxy
        self.detector.add_proxy(state.global_step, float(logs[proxy]))
        due = state.global_step - self.last_check >= self.every or state.global_step >= state.max_steps
        if not due or state.global_step == self.last_check:
            return
        self.last_check = state.global_step
        values, ranking = self.scores(model, processing_class)
        value = sum(values) / len(self.rows)
        record = {"step": state.global_step, "epoch": state.epoch, f"watch/{self.metric}": value}
        if ranking:
            record["watch/ranking"] = sum(ranking) / len(ranking)
        append_metrics(self.metrics_path, record)
        warned = self.detector.check(state.global_step, value, ranking)
        if (
            self.action == "rollback"
            and self.detector.warning is None
            and not self.detector.checks[-1]["suspicious"]
        ):
            if value >= self.best[1]:
                self.keep_best(state.global_step, value)
        if warned:
            self.say(
                f"warning: {warning_line(self.detector.warning)} ({len(self.rows)} rows). Likely fixes: "
                + "; ".join(self.fixes)
            )
            if self.action != "warn":
                self.act(state, control)

    def summary(self) -> dict:
        """summary.json's `reward_watch` and, when it warned, `reward_hacking`."""
        if self.detector is None:
            return {}
        d = self.detector
        checks = [{k: c[k] for k in ("step", "held_out", "ranking", "suspicious")} for c in d.checks]
        out = {
            "reward_watch": {
                "metric": self.metric,
                "rows": len(self.rows),
                "every": self.every,
                "before": d.before,
                "ranking_before": d.ranking_before and sum(d.ranking_before) / len(d.ranking_before),
                "checks": checks,
            }
        }
        out["reward_watch"]["on_hacking"] = self.action
        if d.warning is not None:
            out["reward_hacking"] = {**d.warning, "fixes": self.fixes, "acted": self.acted}
        return out
