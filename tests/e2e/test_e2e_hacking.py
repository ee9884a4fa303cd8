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


def test_a_one_step_reward_model_triggers_the_reward_hacking_warning(tmp_path, repo_cwd, capsys):
    rm, out = tmp_path / "rm", tmp_path / "ppo"
    common = [f"train.seed={SEED}", "--profile", "cpu", "--no-report"]
    assert (
        main(["train", "recipes/tiny/reward.yaml", f"train.output_dir={rm}", "train.max_steps=1", *common])
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "recipes/tiny/ppo.yaml",
                f"train.output_dir={out}",
                f"train.reward_model_path={rm}",
                "rewards=[]",
                *common,
            ]
        )
        == 0
    )
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
    assert held["name"] == "exact_match" and held["before"] - held["last"] > held["margin"] > 0
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
