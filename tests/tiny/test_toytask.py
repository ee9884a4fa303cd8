"""The toy task: data generators, committed data files, metric, reward and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align_recipes import tiny
from align_recipes.data.messages import prompt_text
from align_recipes.tiny import toytask as tt

DATA_DIR = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "data"


def _prompt(row: dict) -> str:
    return prompt_text(row["messages"][:1] if "messages" in row else row["prompt"])


def _solve(text: str) -> str:
    a, b = text.rstrip("=").split("+")
    return str(int(a) + int(b))


# ------------------------------------------------------------------------------------ data


def test_generators_are_deterministic():
    for kind in tt.KINDS:
        assert tt.generate_rows(kind) == tt.generate_rows(kind)
        assert tt.generate_rows(kind, n=7, seed=3) == tt.generate_rows(kind, n=7, seed=3)
    assert tt.generate_rows("prefs", seed=1) != tt.generate_rows("prefs", seed=2)
    assert len(tt.generate_rows("sft", n=450)) == 450  # cycles through the split


def test_splits_are_disjoint_and_seed_independent():
    eval_, sft, rl = (set(tt.split_pairs(s)) for s in ("eval", "sft", "rl"))
    assert len(eval_) == 100 and len(sft) == 200 and len(rl) == 100
    assert not (eval_ & sft) and not (eval_ & rl) and not (sft & rl)
    assert len(eval_ | sft | rl) == (tt.OPERAND_MAX + 1) ** 2
    # the seed reorders rows but never moves a prompt into or out of the held-out split
    for seed in (0, 1, 99):
        assert {_prompt(r) for r in tt.generate_rows("eval", seed=seed)} == {f"{a}+{b}=" for a, b in eval_}


def test_committed_data_files_match_the_generator():
    assert tt._check(DATA_DIR) == [], "run: python -m align_recipes.tiny.toytask write recipes/tiny/data"
    for kind, (name, _) in tt.KINDS.items():
        # reward_prefs holds nine pairs per training prompt (the near misses a reward model must rank)
        assert (DATA_DIR / name).stat().st_size < (500_000 if kind == "reward_prefs" else 100_000), name


def test_eval_prompts_never_appear_in_training_files():
    eval_prompts = {_prompt(r) for r in tt.load_rows(DATA_DIR / "eval.jsonl")}
    assert len(eval_prompts) == 100
    for kind in tt.TRAINING_KINDS:
        name = tt.KINDS[kind][0]
        assert not eval_prompts & {_prompt(r) for r in tt.load_rows(DATA_DIR / name)}, name


def test_row_formats_and_answers():
    for row in tt.generate_rows("sft"):
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == _solve(user["content"])
    for row in tt.generate_rows("prefs"):
        right = _solve(_prompt(row))
        assert row["chosen"] == [{"role": "assistant", "content": right}]
        assert row["rejected"][0]["role"] == "assistant"
        assert row["rejected"][0]["content"] != right and row["rejected"][0]["content"].isdigit()
    unpaired = tt.generate_rows("unpaired")
    for row in unpaired:
        assert row["label"] == (row["completion"][0]["content"] == _solve(_prompt(row)))
    assert abs(sum(r["label"] for r in unpaired) - len(unpaired) / 2) <= 1
    for kind in ("prompts", "eval"):
        for row in tt.generate_rows(kind):
            assert row["answer"] == _solve(_prompt(row))
    eval_rows = tt.generate_rows("eval")
    assert all(r["chosen"] == [{"role": "assistant", "content": r["answer"]}] for r in eval_rows)
    assert all(r["rejected"][0]["content"] != r["answer"] for r in eval_rows)
    assert [(r["prompt"], r["answer"], r["rejected"][0]["content"]) for r in eval_rows] == [
        (r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in tt.generate_rows("prefs_eval")
    ]


def test_reward_pairs_hold_the_policys_near_misses():
    """reward_prefs.jsonl: every training prompt's answer against answer +- 1, +- 2 and +- 10 (where not negative)
    and three more plausible wrong answers; reward_eval.jsonl: each held-out prompt once, against answer +- 1."""
    rows = tt.generate_rows("reward_prefs")
    by_prompt: dict[str, list[int]] = {}
    for row in rows:
        right = _solve(_prompt(row))
        assert row["chosen"] == [{"role": "assistant", "content": right}]
        by_prompt.setdefault(_prompt(row), []).append(int(row["rejected"][0]["content"]) - int(right))
    assert set(by_prompt) == {f"{a}+{b}=" for a, b in tt.split_pairs("train")}
    for prompt, offsets in by_prompt.items():
        right = int(_solve(prompt))
        near = [d for d in (1, -1, 2, -2, 10, -10) if right + d >= 0]
        assert len(offsets) == len(near) + 3 and 0 not in offsets, (prompt, offsets)
        rest = list(offsets)
        for d in near:
            rest.remove(d)
        assert all(right + d >= 0 for d in rest), (prompt, offsets)
    held_out = tt.generate_rows("reward_eval")
    assert sorted(_prompt(r) for r in held_out) == sorted(f"{a}+{b}=" for a, b in tt.split_pairs("eval"))
    offsets = [int(r["rejected"][0]["content"]) - int(r["chosen"][0]["content"]) for r in held_out]
    assert set(offsets) == {1, -1} and 30 <= offsets.count(1) <= 70
    assert [r["chosen"][0]["content"] for r in held_out] == [_solve(_prompt(r)) for r in held_out]


def test_cli_write_and_check(tmp_path, capsys):
    assert tt.main(["write", str(tmp_path)]) == 0
    assert tt.main(["check", str(tmp_path)]) == 0
    (tmp_path / "eval.jsonl").write_text("{}\n")
    assert tt.main(["check", str(tmp_path)]) == 1
    assert "eval.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------------------- metric, reward


def test_exact_match_and_answer_match():
    assert tt.exact_match(" 19\n", "19") == 1.0
    assert tt.exact_match("19 ", " 19") == 1.0
    assert tt.exact_match("190", "19") == 0.0
    assert tt.exact_match("19 is it", "19") == 0.0
    assert tt.exact_match([{"role": "assistant", "content": "7"}], "7") == 1.0
    assert tt.answer_match("19 is it", "19") == 1.0
    assert tt.answer_match("190", "19") == 0.0
    assert tt.answer_match("x19", "19") == 0.0


def test_toy_reward():
    completions = ["19", " 19\n", "19\n<|im_start|>", "18", "1234", "abc", ""]
    answers = ["19"] * len(completions)
    assert tt.toy_reward(None, completions, answers) == [1.0, 1.0, 0.5, 0.1, 0.0, 0.0, 0.0]
    conversational = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "8"}]]
    prompts = [[{"role": "user", "content": "3+4="}]] * 2
    assert tt.toy_reward(
        prompts=prompts, completions=conversational, answer=["7", "7"], trainer_state=None
    ) == [1.0, 0.1]
    with pytest.raises(ValueError):
        tt.toy_reward(None, ["1"], [])


# ---------------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.ensure_tiny_model(tmp_path_factory.mktemp("cache"))
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_untrained_model_scores_about_zero(tiny_pair):
    _, model, tokenizer = tiny_pair
    rows = tt.load_rows(DATA_DIR / "eval.jsonl")[:48]
    model.train()
    result = tt.evaluate_task(model, tokenizer, rows)
    assert model.training  # mode restored
    assert result["n"] == 48
    assert result["exact_match"] <= 0.05 and result["answer_match"] <= 0.05
    assert 0.0 <= result["mean_reward"] <= 0.1
    model.eval()
    pref = tt.preference_accuracy(model, tokenizer, rows[:8])
    assert not model.training
    assert pref["n"] == 8 and 0.0 <= pref["preference_accuracy"] <= 1.0


class _Oracle(torch.nn.Module):
    """Stands in for a model that has learnt the task: generate() appends the right sum and <|im_end|>."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.embed = torch.nn.Embedding(len(tokenizer), 2)

    @property
    def device(self):
        return self.embed.weight.device

    def generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, do_sample, **kwargs):
        assert (attention_mask[:, -1] == 1).all(), "prompts must be left padded"
        assert not do_sample, "greedy"
        rows = []
        for ids in input_ids.tolist():
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            question = text.split("user\n")[-1].split("\n")[0]
            answer = self.tokenizer(_solve(question), add_special_tokens=False)["input_ids"]
            rows.append(ids + answer + [eos_token_id])
        width = max(map(len, rows))
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def test_evaluate_task_scores_a_perfect_model(tiny_pair):
    _, _, tokenizer = tiny_pair
    oracle = _Oracle(tokenizer)
    rows = tt.generate_rows("eval", n=40)
    result = tt.evaluate_task(oracle, tokenizer, rows, batch_size=16)
    assert result == {"exact_match": 1.0, "answer_match": 1.0, "mean_reward": 1.0, "n": 40}
    assert oracle.training  # an nn.Module starts in train mode, and is left so


def test_reward_accuracy_runs_on_a_sequence_classifier(tiny_pair):
    from transformers import AutoModelForSequenceClassification

    path, _, tokenizer = tiny_pair
    reward_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    result = tt.reward_accuracy(reward_model, tokenizer, tt.generate_rows("prefs", n=8))
    assert result["n"] == 8 and 0.0 <= result["reward_accuracy"] <= 1.0
