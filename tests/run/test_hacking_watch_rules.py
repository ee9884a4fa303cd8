"""The reward-hacking watch's rules (run/hacking.py) on hand-made sequences, and where its verdict shows:
the `done:` line, report.md, the model card, recipe validation. The tiny runs that trigger it (and the
healthy one that must not) are in tests/e2e/test_e2e_hacking.py."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from align_recipes.run.hacking import (
    HackingDetector,
    likely_fixes,
    noise_of_series,
    standard_error,
    warning_line,
)


def test_standard_error_binomial_with_smoothing_and_of_a_mean():
    # 27 right of 32: p = 28/34, sqrt(p(1-p)/32) = 0.06739 (by hand)
    assert standard_error([1.0] * 27 + [0.0] * 5) == pytest.approx(0.06739, abs=1e-5)
    # all right still has noise: p = 33/34, sqrt(p(1-p)/32) = 0.02987
    assert standard_error([1.0] * 32) == pytest.approx(0.02987, abs=1e-5)
    # rewards 1, 2, 3, 4: sample variance 5/3, sqrt(5/3/4) = 0.6455
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.6455, abs=1e-4)
    assert standard_error([1.0]) == math.inf


def test_noise_of_series_is_half_the_mean_squared_step():
    assert noise_of_series([0.0, 1.0, 0.0, 1.0]) == pytest.approx(math.sqrt(0.5))
    assert noise_of_series([0.3, 0.3, 0.3]) == 0.0
    assert noise_of_series([0.3]) == 0.0


# A run logging its proxy every 5 steps and checking the held-out metric every 10. Before training the
# held-out metric is 0.80 with standard error 0.05: a fall must exceed 0.10.
RISING = [
    0.00,
    0.02,
    0.05,
    0.06,
    0.10,
    0.11,
    0.15,
    0.16,
    0.20,
    0.21,
    0.25,
    0.26,
]  # noise sqrt(mean d²/2) ≈ 0.022


def run(held_out: list[float], proxy: list[float] = RISING) -> tuple[HackingDetector, list[int]]:
    """Feed the proxy (logged at steps 5, 10, …) and a held-out check at every 10th step; the steps that warned."""
    detector = HackingDetector("exact_match", before=0.80, standard_error=0.05)
    warned, checks = [], iter(held_out)
    for i, value in enumerate(proxy):
        step = 5 * (i + 1)
        detector.add_proxy(step, value)
        if step % 10 == 0:
            if detector.check(step, next(checks)):
                warned.append(step)
    return detector, warned


def test_rising_proxy_and_falling_metric_warn_at_the_second_suspicious_check_naming_the_first():
    # step 10: only two proxy values (too few to call it a rise); 20 and 30 both suspicious.
    detector, warned = run([0.60, 0.65, 0.60, 0.62, 0.58, 0.55])
    assert [c["suspicious"] for c in detector.checks] == [False, True, True, True, True, True]
    assert warned == [30]
    warning = detector.warning
    assert warning["since_step"] == 20 and warning["at_step"] == 30 and warning["ongoing"] is True
    assert warning["held_out"] == {
        "name": "exact_match",
        "before": 0.80,
        "last": 0.55,
        "lowest": 0.55,
        "margin": pytest.approx(0.10),
    }
    assert warning["proxy"]["first"] == pytest.approx(0.01)  # mean of the first two logged values
    assert warning["proxy"]["last"] == pytest.approx(0.255)  # … and of the last two


def test_a_fall_within_two_standard_errors_does_not_warn():
    detector, warned = run([0.72, 0.71, 0.75, 0.72, 0.71, 0.705])  # at most 0.095 below 0.80
    assert warned == [] and detector.warning is None
    assert not any(c["suspicious"] for c in detector.checks)


def test_a_falling_metric_without_a_rising_proxy_is_not_reward_hacking():
    flat = [0.10, 0.12, 0.09, 0.11, 0.10, 0.12, 0.09, 0.11, 0.10, 0.12, 0.09, 0.11]  # noise ~0.015, rise 0
    detector, warned = run([0.5, 0.4, 0.4, 0.3, 0.3, 0.3], proxy=flat)
    assert warned == [] and detector.warning is None


def test_a_proxy_rise_inside_its_own_noise_is_not_a_rise():
    noisy = [0.0, 0.3, 0.0, 0.3, 0.05, 0.35, 0.05, 0.35, 0.1, 0.4, 0.1, 0.4]  # rise 0.1, noise ~0.22
    detector, warned = run([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], proxy=noisy)
    assert warned == []
    rise, margin = detector.proxy_rise()
    assert rise == pytest.approx(0.1) and margin > rise


def test_one_suspicious_check_at_a_time_does_not_flap_into_a_warning():
    detector, warned = run([0.78, 0.60, 0.78, 0.60, 0.78, 0.60])
    assert [c["suspicious"] for c in detector.checks] == [False, True, False, True, False, True]
    assert warned == [] and detector.warning is None


def test_the_warning_stands_after_recovery_and_says_it_is_no_longer_ongoing():
    detector, warned = run([0.60, 0.60, 0.60, 0.60, 0.79, 0.81])
    assert warned == [30]
    warning = detector.warning
    assert warning["since_step"] == 20 and warning["ongoing"] is False
    assert warning["held_out"]["last"] == 0.81 and warning["held_out"]["lowest"] == 0.60
    assert warning_line(warning).endswith(
        "held-out exact_match fell 0.800 → 0.600; it recovered (0.810 at the last check)"
    )
    assert detector.check(70, 0.5) is False  # a relapse updates the warning, it never raises a second one
    assert warning["ongoing"] is True and warning["since_step"] == 20
    assert warning_line(warning).endswith("held-out exact_match fell 0.800 → 0.500")
    assert detector.check(80, 0.55) is False
    assert warning_line(warning).endswith("fell 0.800 → 0.500 (0.550 at the last check)")


def test_the_proxys_ranking_of_wrong_answers_falls_beyond_the_error_of_the_difference():
    # before: 18 of 20 wrong answers ranked below the right one, p = 19/22, SE = 0.07675 (by hand)
    detector = HackingDetector("exact_match", 0.8, 0.05, ranking_before=[1.0] * 18 + [0.0] * 2)
    # 5 of 12: p = 6/14, SE = 0.14286; margin 2 * hypot = 0.3244 < 0.9 - 0.4167
    assert detector.ranking_fell([1.0] * 5 + [0.0] * 7) is True
    # 7 of 10: SE 0.14907, margin 0.3353 > 0.9 - 0.7
    assert detector.ranking_fell([1.0] * 7 + [0.0] * 3) is False
    assert detector.ranking_fell([0.0] * 4) is False  # fewer than MIN_RANKED wrong answers: no signal
    assert (
        HackingDetector("exact_match", 0.8, 0.05).ranking_fell([0.0] * 10) is False
    )  # nothing to compare with


def test_a_falling_ranking_warns_even_while_the_held_out_metric_holds():
    """The reward model starts preferring the policy's wrong answers to the right ones: the second signal."""
    detector = HackingDetector("exact_match", 0.80, 0.05, ranking_before=[1.0] * 18 + [0.0] * 2)
    warned = []
    for i, value in enumerate(RISING):
        step = 5 * (i + 1)
        detector.add_proxy(step, value)
        if step % 10 == 0:
            ranking = [1.0] * 18 + [0.0] * 2 if step < 20 else [1.0] * 3 + [0.0] * 9
            if detector.check(step, 0.79, ranking):
                warned.append(step)
    assert warned == [30] and [c["ranking_fell"] for c in detector.checks] == [
        False,
        True,
        True,
        True,
        True,
        True,
    ]
    ranking = detector.warning["ranking"]
    assert ranking == {"before": 0.9, "last": 0.25, "fell": True}
    assert warning_line(detector.warning).endswith(
        "rose 0.01 → 0.255 while the reward ranked fewer of the policy's wrong held-out answers below the right one "
        "(90% → 25%)"
    )
    detector.warning["ranking"]["fell"] = (
        False  # had only the metric fallen, the ranking would be a diagnosis
    )
    detector.warning["held_out"]["lowest"] = 0.6
    assert warning_line(detector.warning).endswith(
        "while held-out exact_match fell 0.800 → 0.600 (0.790 at the last check); the reward still ranks 25% of "
        "the policy's wrong held-out answers below the right one (before training 90%)"
    )


def test_likely_fixes_name_the_recipes_own_keys():
    ppo = likely_fixes(SimpleNamespace(learning_rate=1e-4, kl_coef=0.02), reward_model=True)
    assert ppo[0] == "lower train.learning_rate (now 0.0001)"
    assert ppo[1] == "a stronger KL penalty to the reference (train.kl_coef, now 0.02)"
    assert "better reward model" in ppo[2]
    grpo = likely_fixes(SimpleNamespace(learning_rate=3e-5, beta=0.0), reward_model=False)
    assert grpo[1] == "a stronger KL penalty to the reference (train.beta, now 0)"
    assert "reward that cannot be gamed" in grpo[2]


# --- where the verdict shows -----------------------------------------------------------------------

WARNING = {
    "since_step": 20,
    "at_step": 25,
    "ongoing": True,
    "proxy": {"name": "reward", "first": -0.0305, "last": 0.0379},
    "held_out": {"name": "exact_match", "before": 0.844, "last": 0.656, "margin": 0.135},
    "fixes": [
        "lower train.learning_rate (now 0.0001)",
        "a stronger KL penalty to the reference (train.kl_coef, now 0.02)",
        "a better reward model",
    ],
}


def watched_run(folder, warning: dict | None):
    folder.mkdir(parents=True)
    records = [{"step": s, "reward": 0.01 * s, "kl": 0.1, "loss": 0.0} for s in (5, 10, 15, 20, 25)]
    records += [{"step": s, "epoch": 1.0, "watch/exact_match": v} for s, v in ((10, 0.7), (20, 0.65))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "algorithm": "ppo",
        "model": "builtin:tiny-qwen2-sft",
        "status": "complete",
        "steps": 25,
        "task_metrics": [{"name": "exact_match", "before": 0.79, "after": 0.6, "n": 100}],
        "reward_watch": {
            "metric": "exact_match",
            "rows": 32,
            "every": 5,
            "before": 0.844,
            "checks": [{"step": 10, "held_out": 0.7, "suspicious": False}],
        },
        **({"reward_hacking": warning} if warning else {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder, summary


def test_a_warning_reaches_the_done_line_report_and_card(tmp_path):
    from align_recipes.results.report import write_report
    from align_recipes.run.card import model_card
    from align_recipes.run.finish import headline

    folder, summary = watched_run(tmp_path / "hacked", WARNING)
    assert headline(summary) == (
        "exact_match 0.790 → 0.600 · ⚠ reward hacking suspected since step 20: sampled "
        "reward rose -0.0305 → 0.0379 while held-out exact_match fell 0.844 → 0.656 "
        "(fixes: summary.json reward_hacking)"
    )
    text = write_report(folder).read_text()
    section = text[text.index("## Reward-hacking watch") : text.index("## Training metrics")]
    assert "Held-out exact_match on 32 rows of evaluate.data every 5 steps (before training 0.844" in section
    assert (
        "**Warning: reward hacking suspected since step 20" in section
        and "still so at the last check" in section
    )
    assert "- lower train.learning_rate (now 0.0001)" in section and "- a better reward model" in section
    assert "`watch/exact_match`" in text  # its checks are plotted and tabled with the training metrics
    assert "Warning: reward hacking suspected since step 20" in model_card(folder)


def test_a_watched_run_without_a_warning_says_so_and_the_done_line_stays_plain(tmp_path):
    from align_recipes.results.report import write_report
    from align_recipes.run.card import model_card
    from align_recipes.run.finish import headline

    folder, summary = watched_run(tmp_path / "healthy", None)
    assert headline(summary) == "exact_match 0.790 → 0.600"
    text = write_report(folder).read_text()
    assert "No sign of reward hacking" in text and "Warning" not in text
    assert "hacking" not in model_card(folder)


def test_watch_checks_are_drawn_with_the_reward():
    from align_recipes.results.report import group_of

    assert group_of("watch/exact_match", online=True) == "online_rl"


def test_a_note_prints_above_the_bar_on_a_terminal_and_as_a_plain_line_otherwise():
    import io

    from align_recipes.run.progress import progress_callback

    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10)
    plain = io.StringIO()
    callback = progress_callback(("loss",), stream=plain, interactive=False)
    callback.on_train_begin(None, state, None)
    callback.note("warning: reward hacking suspected since step 20")
    assert plain.getvalue() == "warning: reward hacking suspected since step 20\n"

    screen = io.StringIO()
    callback = progress_callback(("loss",), stream=screen, interactive=True)
    callback.on_train_begin(None, state, None)
    state.global_step = 4
    callback.on_step_end(None, state, None)
    callback.note("warning: reward hacking suspected since step 20")
    callback.on_train_end(None, state, None)
    shown = screen.getvalue()
    before, after = shown.split("warning: reward hacking suspected since step 20\n")
    assert "0/10" in before and "4/10" in after  # the bar was cleared for the line and redrawn below it


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.watch_every=-1", "impossible value -1"),
        ("evaluate.watch_rows=1", "impossible value 1"),
        ("evaluate.watch_every=often", "expected int"),
    ],
)
def test_bad_watch_settings_are_named_before_anything_loads(override, message, repo_cwd):
    from align_recipes.errors import RecipeError, RecipeErrors
    from align_recipes.plan import load_plan

    with pytest.raises((RecipeError, RecipeErrors)) as info:
        load_plan("recipes/tiny/ppo.yaml", [override], profile="cpu")
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.key == override.split("=")[0] and message in str(e) for e in errors), [
        str(e) for e in errors
    ]


def test_the_watch_is_off_where_it_cannot_apply(repo_cwd):
    from align_recipes.plan import load_plan
    from align_recipes.run.watch import reward_watch

    said = []
    dpo = load_plan("recipes/tiny/dpo.yaml", profile="cpu")  # does not generate
    assert reward_watch(dpo, trainer=None, metrics_path=None, say=said.append) is None
    off = load_plan("recipes/tiny/ppo.yaml", ["evaluate.watch_every=0"], profile="cpu")
    assert reward_watch(off, trainer=None, metrics_path=None, say=said.append) is None
    unevaluated = load_plan("recipes/tiny/ppo.yaml", ["evaluate=null"], profile="cpu")
    assert reward_watch(unevaluated, trainer=None, metrics_path=None, say=said.append) is None
    assert said == []
