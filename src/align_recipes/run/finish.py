"""Finish: how a run ends, in every status it can end in.

`finish` saves the model, measures it and writes summary.json at status `complete` (or `stopped_hacking`),
or, after a signal or a non-finite loss, writes `interrupted` / `diverged` and raises. `write_failed`
writes `failed` for any other error after the run began; `headline` is the `done:` line's verdict.
"""

from __future__ import annotations

import sys
import time

from align_recipes import console, stats
from align_recipes.plan import Plan
from align_recipes.redaction import redact
from align_recipes.run import checkpoints, guards, hacking, harness, sharded, watch
from align_recipes.run.card import write_card
from align_recipes.run.inference_template import save_inference_template
from align_recipes.run.load import Parts
from align_recipes.run.measure import compare_metrics, measure, run_reward, scores_by_name
from align_recipes.run.rundir import (
    SUMMARY,
    RunDir,
    Start,
    first_and_last,
    is_main_process,
    task_metrics,
    whole_run_loss,
)


def finish(
    plan: Plan,
    parts: Parts,
    trainer,
    run_dir: RunDir,
    guard: guards.RunGuard,
    record: dict,
    start: Start,
    command: list[str],
    training_loss: float | None,
) -> dict:
    """Stop cleanly after a signal or divergence; otherwise save the model, measure it and write the
    summary at status `complete`."""
    main = is_main_process()
    steps = trainer.state.global_step
    records = run_dir.metrics() if main else []
    first, last = first_and_last(records)
    record = {
        **record,
        "distributed": sharded.describe(trainer),
        "steps": steps,
        "max_steps": trainer.state.max_steps,
        "train_loss": whole_run_loss(records, start.step, steps, training_loss),
        "metrics_first": first,
        "metrics_last": last,
    }
    resume_cmd = checkpoints.resume_command(command)
    if guard.diverged is not None:
        _stop_diverged(plan, parts, run_dir, guard, record, resume_cmd, main)
    if guard.signum is not None and guard.signal_phase == "training":
        checkpoint = guard.last_good
        if main:
            run_dir.write_summary(
                {
                    **record,
                    "status": "interrupted",
                    "signal": guards.signal_name(guard.signum),
                    "checkpoint": str(checkpoint) if checkpoint else None,
                    "resume_command": resume_cmd,
                }
            )
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint could be saved"
        raise guards.RunInterrupted(
            guard.signum,
            f"{guards.signal_name(guard.signum)}: stopped at step {steps}"
            f"/{trainer.state.max_steps}; {saved}; summary in {run_dir / SUMMARY}"
            f"\n  resume with: {resume_cmd}",
        )

    sharded.save_consolidated(trainer, plan.output_dir)
    if not trainer.is_world_process_zero():
        return {}
    save_inference_template(plan.output_dir, parts.tokenizer)
    measured = sharded.measured_model(trainer, plan.output_dir) if guard.signum is None else None
    after = (
        measure(plan, measured, parts.tokenizer, parts.start, run_reward(plan, trainer))
        if measured is not None
        else None
    )
    if after is not None:
        run_dir.write_heldout_scores("after", scores_by_name(after))
    general = (
        harness.measure_after(plan, run_dir.path, measured, parts.tokenizer) if measured is not None else None
    )
    watched = watch.watch_summary(trainer)
    summary = {
        **record,
        "status": hacking.run_status(watched),  # `stopped_hacking` when evaluate.on_hacking ended it
        "task_metrics": compare_metrics(
            record["task_metrics_before"], after, run_dir.heldout_scores("before")
        ),
        **({"harness": general} if general is not None else {}),
        **watched,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run_dir.write_summary(summary)
    write_card(plan.output_dir)
    if guard.signum is not None:
        raise guards.RunInterrupted(
            guard.signum,
            f"{guards.signal_name(guard.signum)}: training had finished and the "
            f"model is saved in {plan.output_dir}; the final evaluation was skipped",
        )
    # The wall time has its own line: the `done:` line is the run's result, the same on every x86-64 CPU of one
    # maker in reproducible mode (README quotes it exactly, for AMD and for Intel), and time is not.
    console.info(f"trained in {summary['runtime_s']:.1f}s · {plan.output_dir}")
    console.done(f"{summary['steps']} steps · {headline(summary)}")
    return summary


def _stop_diverged(
    plan: Plan,
    parts: Parts,
    run_dir: RunDir,
    guard: guards.RunGuard,
    record: dict,
    resume_cmd: str,
    main: bool,
) -> None:
    """Write the summary of a run whose loss or gradient stopped being finite, and raise."""
    where = guard.diverged
    values = ", ".join(f"{k}={v}" for k, v in where["values"].items())
    good, _ = checkpoints.newest_complete(
        plan.output_dir, require_optimizer=not plan.train.get("save_only_model", False)
    )
    causes = guards.likely_causes(parts.config, parts.tokenizer, plan.algorithm.name)
    if main:
        run_dir.write_summary(
            {
                **record,
                "status": "diverged",
                "diverged_at": where["step"],
                "non_finite": where["values"],
                "likely_causes": causes,
                "checkpoint": str(good) if good else None,
            }
        )
    kept = (
        f"kept the last good checkpoint, {good}; after the fix, continue it with: {resume_cmd}"
        if good
        else "no good checkpoint was saved (set train.save_strategy: steps and train.save_steps to keep some)"
    )
    raise guards.TrainingDiverged(
        f"training stopped at step {where['step']}: {values} (the loss or gradient is no longer finite)",
        key="train",
        file=plan.recipe_path,
        fix="likely causes, most likely first:\n" + "\n".join(f"    - {c}" for c in causes) + f"\n  {kept}",
    )


def headline(summary: dict) -> str:
    """The `done:` line's verdict: every held-out metric before → after with its paired difference, 95%
    interval, n and verdict (stats.before_after), else the training loss."""
    shown = [
        stats.before_after(t)
        for t in task_metrics(summary)
        if isinstance(t.get("before"), (int, float)) and isinstance(t.get("after"), (int, float))
    ]
    if shown:
        return " · ".join(shown) + hacking.done_note(summary)
    loss = summary.get("train_loss")
    return f"train loss {loss:.4f}" if isinstance(loss, (int, float)) else "no loss logged"


def server_death(exc: BaseException) -> BaseException:
    """The run's own vLLM server exited while the run used it (rl/vllm_server.died): that is the error to report,
    not the refused connection the trainer saw. Any other error, and Ctrl-C, stay as they are."""
    module = sys.modules.get("align_recipes.rl.vllm_server")  # imported only when the run started a server
    if module is None or not isinstance(exc, Exception):
        return exc
    return module.died() or exc


def write_failed(run_dir: RunDir, record: dict, exc: BaseException, existed: bool) -> bool:
    """summary.json at status `failed`, with the error. Not over another run's folder that was never ours
    (an existing folder this run had not prepared keeps its summary). Returns whether it wrote."""
    if not is_main_process() or (
        existed and not run_dir.prepared and run_dir.status() not in (None, "failed")
    ):
        return False
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.write_summary(
        {
            **record,
            "status": "failed",
            "error": redact(f"{type(exc).__name__}: {exc}")[:2000],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    return True
