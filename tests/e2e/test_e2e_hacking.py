"""End-to-end: a deliberately weak reward model makes PPO hack it, and the reward-hacking watch says so live,
in summary.json, on the `done:` line and in report.md. The healthy counterpart, PPO on the toy task's rule
reward, must not warn: tests/e2e/test_e2e_offline.py checks that on its PPO run.

The reward model is `recipes/tiny/reward.yaml` trained for one step from the builtin SFT policy (held-out
preference accuracy ~0.57, barely above chance); PPO (`recipes/tiny/ppo.yaml`, its rule reward removed)
raises that model's score while greedy exact match on the held-out prompts falls. Over seeds 42, 1, 2, 3, 4
on a 2-core CPU every run warned (docs/benchmarks.md, "Reward-hacking watch"). The seed comes from
ALIGN_RECIPES_TEST_SEED, as in tests/e2e/test_e2e_offline.py.
"""

from __future__ import annotations

import json
import os

import pytest

from align_recipes.cli import main
from align_recipes.results.report import write_report

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("ALIGN_RECIPES_TEST_SEED", "42"))
STEPS = (
    60  # ppo.yaml's own: the five seeds were measured at it (a shorter run decays the learning rate sooner)
)


@pytest.fixture(scope="module")
def weak_reward_model(tmp_path_factory):
    """`recipes/tiny/reward.yaml` trained for one step: the reward model PPO learns to climb."""
    rm = tmp_path_factory.mktemp("weak") / "rm"
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        args = ["train", "recipes/tiny/reward.yaml", f"train.output_dir={rm}", "train.max_steps=1"]
        assert main([*args, f"train.seed={SEED}", "--profile", "cpu", "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    return rm


def hacked_ppo(out, rm, *overrides):
    args = ["train", "recipes/tiny/ppo.yaml", f"train.output_dir={out}", f"train.reward_model_path={rm}"]
    return main([*args, "rewards=[]", f"train.seed={SEED}", "--profile", "cpu", "--no-report", *overrides])


def test_on_hacking_stop_ends_the_weak_reward_model_run_early(tmp_path, repo_cwd, weak_reward_model, capsys):
    out = tmp_path / "ppo"
    assert hacked_ppo(out, weak_reward_model, "evaluate.on_hacking=stop") == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    warning = summary["reward_hacking"]
    assert summary["status"] == "stopped_hacking"
    assert summary["steps"] == warning["at_step"] == warning["acted"]["stopped_at_step"] < STEPS
    assert (out / f"checkpoint-{summary['steps']}").is_dir()  # saved at the step it stopped
    assert (out / "model.safetensors").is_file()  # and the run finished: final model, metric after
    assert f"stopping: stopped at step {summary['steps']} (evaluate.on_hacking: stop)" in printed
    [done] = [line for line in printed.splitlines() if line.startswith("done:")]
    assert "(evaluate.on_hacking: stop)" in done


def test_on_hacking_rollback_leaves_a_model_no_worse_than_at_the_warning(
    tmp_path, repo_cwd, weak_reward_model, capsys
):
    out = tmp_path / "ppo"
    assert hacked_ppo(out, weak_reward_model, "evaluate.on_hacking=rollback") == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    warning, checks = summary["reward_hacking"], summary["reward_watch"]["checks"]
    acted = warning["acted"]
    assert summary["status"] == "stopped_hacking" and summary["steps"] == acted["stopped_at_step"] < STEPS
    at_warning = next(c["held_out"] for c in checks if c["step"] == warning["at_step"])
    [after] = [t["after"] for t in summary["task_metrics"] if t["name"] == "exact_match"]
    # the same 100 rows, greedy: the final model scores what the restored policy scored at its check
    assert after == pytest.approx(acted["held_out_restored"]) and after >= at_warning
    assert acted["rolled_back_to_step"] < warning["since_step"]
    assert "rolling back: rolled back to the policy of step" in printed


def test_a_one_step_reward_model_triggers_the_reward_hacking_warning(
    tmp_path, repo_cwd, weak_reward_model, capsys
):
    out = tmp_path / "ppo"
    assert hacked_ppo(out, weak_reward_model) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())

    watch, warning = summary["reward_watch"], summary["reward_hacking"]
    assert watch["metric"] == "exact_match" and watch["rows"] == 100 and watch["every"] == 5
    before = {m["name"]: m["before"] for m in summary["task_metrics"]}
    assert (
        watch["before"] == before["exact_match"]
    )  # all 100 held-out rows: what measure.py found before training
    assert [c["step"] for c in watch["checks"]] == list(range(5, STEPS + 1, 5))
    assert warning["proxy"]["name"] == "reward" and warning["proxy"]["last"] > warning["proxy"]["first"]
    held = warning["held_out"]
    # it fell beyond its noise while the proxy rose; the policy may climb back before the run ends (an Intel
    # CPU, seed 42: from 0.82 below 0.74 at the warning, then 0.76 at the last check, within the margin 0.078)
    assert held["name"] == "exact_match" and held["before"] - held["lowest"] > held["margin"] > 0
    assert held["lowest"] <= held["last"]
    assert (
        20 <= warning["since_step"] < warning["at_step"] <= STEPS
    )  # four proxy logs are needed to call a rise
    assert any("kl_coef" in fix for fix in warning["fixes"]) and any(
        "reward model" in f for f in warning["fixes"]
    )
    # the checks are in metrics.jsonl, for the report's plot
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "watch/exact_match" in r] == list(range(5, STEPS + 1, 5))
    # the second signal: how the reward model ranks the policy's wrong answers against the right ones
    assert 0.0 <= watch["ranking_before"] <= 1.0 and 0.0 <= warning["ranking"]["last"] <= 1.0
    assert (
        sum("watch/ranking" in r for r in records)
        == sum(c["ranking"] is not None for c in watch["checks"])
        > 0
    )

    since = f"reward hacking suspected since step {warning['since_step']}"
    assert f"warning: {since}" in printed  # live, when it was raised
    [done] = [line for line in printed.splitlines() if line.startswith("done:")]
    assert since in done
    assert since in write_report(out).read_text()
