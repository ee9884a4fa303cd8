"""The toy task the built-in tiny model learns on a CPU in seconds: adding two numbers from 0 to 19.

A prompt is one user message such as ``"12+7="``; the answer is the sum as digits, ``"19"``. The
400 possible prompts are split once, by a fixed seed that no caller can change, into three
disjoint parts:

- ``eval`` (100 prompts): held out from every training file, to measure generalisation;
- ``sft`` (200 prompts): the supervised fine-tuning examples;
- ``rl`` (100 prompts): prompts the SFT data never shows, used for online RL (GRPO, RLOO, online
  DPO, PPO, SPO) so that a policy trained by SFT still has something to learn there.

Preference and KTO data use ``train`` (``sft`` + ``rl``, 300 prompts). Why addition: it is
arithmetic, a tiny model learns it in seconds, and it generalises to sums no training file holds,
while leaving later stages room to improve. Measured with plain TRL on 2 CPU cores (the built-in
tiny model, greedy exact match on ``eval.jsonl``): untrained 0.00; SFT (lr 1.5e-3, 48 epochs =
336 steps of 32, linear decay, assistant-only loss) 0.76; then GRPO with `toy_reward` on
``prompts.jsonl`` (lr 1e-4, 80 steps of 8 prompts x 8 samples) 0.81, or DPO with an added SFT
term (``loss_type=["sigmoid", "sft"]``, lr 1e-4, 60 steps of 16) 0.81. Plain sigmoid DPO raises
its held-out reward accuracy and margins but lowers greedy exact match (0.76 -> 0.67).

Data files (``python -m align_recipes.tiny.toytask write recipes/tiny/data``), all conversational:

- ``sft.jsonl``       ``{"messages": [user, assistant]}``
- ``prefs.jsonl``     ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``
- ``unpaired.jsonl``  ``{"prompt": [user], "completion": [assistant], "label": bool}``
- ``prompts.jsonl``   ``{"prompt": [user], "answer": "19"}`` (the ``rl`` split)
- ``rlhf_prompts.jsonl`` the same layout over ``train`` (300 prompts): the RLHF flow's PPO stage, which reads
  the reward model rather than the answers, optimises on every prompt that model was trained on (with the 100
  RL prompts alone the policy fits them and held-out exact match stays flat: docs/benchmarks.md)
- ``eval.jsonl``      ``{"prompt": [user], "answer": "19", "chosen": [assistant], "rejected": [assistant]}``
  (held out): one file serves every held-out metric, exact match (prompt + answer), preference
  accuracy (prompt + chosen + rejected) and reward (prompt + answer for `toy_reward`)
- ``prefs_eval.jsonl`` the same held-out pairs in the prefs format only, for a trainer's ``eval_dataset``
  (DPO/ORPO/reward models then log held-out ``eval_rewards/accuracies``)
- ``reward_prefs.jsonl`` prefs format, for the reward model of the RLHF flow (`near_miss_pairs`): every
  training prompt's answer against each near miss of `NEAR_MISSES` (+- 1, +- 2, +- 10) and `NEAR_MISS_RANDOM`
  (3) other plausible wrong answers. The tiny SFT policy's greedy mistakes are almost all the answer +- 1
  (measured: 21 of
  its 100 held-out answers, 25 of the 100 RL prompts' answers, are +- 1); a reward model that only ever
  saw one random wrong answer per prompt ranks answer + 1 above the answer on most prompts, and PPO
  then learns that mistake.
- ``reward_eval.jsonl`` prefs format, held out: each eval prompt's answer against answer + 1 or
  answer - 1 (one per prompt, the sign drawn by the seed): what the RLHF flow's gate measures.

Wrong answers are plausible mistakes: off by one or two, a missed or spurious carry (off by ten),
dropping an operand, or swapped digits.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from align_recipes import model_scores
from align_recipes.data.messages import completion_text

OPERAND_MAX = 19  # operands are 0..OPERAND_MAX
SPLIT_SEED = 20240611  # fixes which prompts are held out; never derived from a caller's seed
SPLIT_SIZES = {"eval": 100, "sft": 200, "rl": 100}
SPLITS = ("eval", "sft", "rl", "train")  # train = sft + rl

# kind -> (file name, default split)
KINDS: dict[str, tuple[str, str]] = {
    "sft": ("sft.jsonl", "sft"),
    "prefs": ("prefs.jsonl", "train"),
    "unpaired": ("unpaired.jsonl", "train"),
    "prompts": ("prompts.jsonl", "rl"),
    "rlhf_prompts": ("rlhf_prompts.jsonl", "train"),
    "eval": ("eval.jsonl", "eval"),
    "prefs_eval": ("prefs_eval.jsonl", "eval"),
    "reward_prefs": ("reward_prefs.jsonl", "train"),
    "reward_eval": ("reward_eval.jsonl", "eval"),
}
TRAINING_KINDS = (
    "sft",
    "prefs",
    "unpaired",
    "prompts",
    "rlhf_prompts",
    "reward_prefs",
)  # files that must never hold an eval prompt
NEAR_MISSES = (
    1,
    -1,
    2,
    -2,
    10,
    -10,
)  # reward_prefs: answer + each offset is a rejected answer (the policy's mistakes)
NEAR_MISS_RANDOM = 3  # reward_prefs: and this many other plausible wrong answers per prompt (`wrong_answer`)
DATA_SEED = 0  # the seed the committed files are written with

Pair = tuple[int, int]
Message = dict[str, str]


# ------------------------------------------------------------------------------------- prompts


def user_message(a: int, b: int) -> list[Message]:
    return [{"role": "user", "content": f"{a}+{b}="}]


def assistant_message(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def split_pairs(split: str) -> list[Pair]:
    """The operand pairs of one split, in a fixed order. Splits are disjoint; see the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    pairs = [(a, b) for a in range(OPERAND_MAX + 1) for b in range(OPERAND_MAX + 1)]
    random.Random(SPLIT_SEED).shuffle(pairs)
    parts: dict[str, list[Pair]] = {}
    start = 0
    for name, size in SPLIT_SIZES.items():
        parts[name] = pairs[start : start + size]
        start += size
    if start != len(pairs):
        raise AssertionError("SPLIT_SIZES must cover every pair")
    parts["train"] = parts["sft"] + parts["rl"]
    return list(parts[split])


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
    """A plausible wrong sum: off by one/two, a carry slip (off by ten), an operand dropped, digits swapped."""
    right = a + b
    candidates = {right + 1, right - 1, right + 2, right - 2, right + 10, right - 10, a, b}
    if right >= 10:
        candidates.add(int(str(right)[::-1]))
    options = sorted(c for c in candidates if c >= 0 and c != right)
    return str(rng.choice(options))


# ---------------------------------------------------------------------------------- generators


def generate_rows(
    kind: str, n: int | None = None, seed: int = DATA_SEED, split: str | None = None
) -> list[dict]:
    """Rows of one data file. Deterministic in (kind, n, seed, split).

    ``split`` defaults to the kind's own (see `KINDS`); ``n`` defaults to one row per prompt of
    the split. A larger ``n`` cycles through the prompts again (new wrong answers). ``seed``
    orders the rows and picks wrong answers and KTO labels; it never moves a prompt between splits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    split = split or KINDS[kind][1]
    if kind == "prefs_eval":  # eval rows, reshaped: same prompts, order and wrong answers as eval.jsonl
        return [
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in generate_rows("eval", n=n, seed=seed, split=split)
        ]
    if kind == "reward_prefs":
        rows = near_miss_pairs(seed, split, NEAR_MISSES, NEAR_MISS_RANDOM)
        return rows if n is None else [rows[i % len(rows)] for i in range(n)]
    pairs = split_pairs(split)
    rng = random.Random(f"{kind}:{seed}")
    order = list(pairs)
    rng.shuffle(order)
    count = len(order) if n is None else n
    if count < 0:
        raise ValueError("n must be >= 0")
    rows: list[dict] = []
    labels = [i % 2 == 0 for i in range(count)]  # KTO: balanced desirable/undesirable
    rng.shuffle(labels)
    for i in range(count):
        a, b = order[i % len(order)]
        answer = str(a + b)
        prompt = user_message(a, b)
        if kind == "sft":
            rows.append({"messages": prompt + assistant_message(answer)})
        elif kind == "prefs":
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": assistant_message(answer),
                    "rejected": assistant_message(wrong_answer(a, b, rng)),
                }
            )
        elif kind == "unpaired":
            good = labels[i]
            text = answer if good else wrong_answer(a, b, rng)
            rows.append({"prompt": prompt, "completion": assistant_message(text), "label": good})
        elif kind in ("prompts", "rlhf_prompts"):
            rows.append({"prompt": prompt, "answer": answer})
        elif kind == "reward_eval":
            near = a + b + 1 if a + b == 0 or rng.random() < 0.5 else a + b - 1
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": assistant_message(answer),
                    "rejected": assistant_message(str(near)),
                }
            )
        else:  # eval
            rows.append(
                {
                    "prompt": prompt,
                    "answer": answer,
                    "chosen": assistant_message(answer),
                    "rejected": assistant_message(wrong_answer(a, b, rng)),
                }
            )
    return rows


def near_miss_pairs(
    seed: int = DATA_SEED, split: str = "train", offsets: Sequence[int] = (1, -1), random_wrong: int = 1
) -> list[dict]:
    """Preference pairs (prefs format) for a reward model that must not prefer near misses: for every prompt of
    ``split``, the right answer against answer + each of ``offsets`` (the mistakes RL policies drift to) and against
    ``random_wrong`` other plausible wrong answers (`wrong_answer`). Negative sums are skipped; rows are shuffled
    by ``seed``. ``reward_prefs.jsonl`` is these pairs with `NEAR_MISSES` and `NEAR_MISS_RANDOM`."""
    rng = random.Random(f"near_miss:{seed}")
    rows = []
    for a, b in split_pairs(split):
        right = a + b
        wrong = [right + d for d in offsets if right + d >= 0 and d != 0]
        wrong += [int(wrong_answer(a, b, rng)) for _ in range(random_wrong)]
        rows += [
            {
                "prompt": user_message(a, b),
                "chosen": assistant_message(str(right)),
                "rejected": assistant_message(str(w)),
            }
            for w in wrong
        ]
    rng.shuffle(rows)
    return rows


def dumps_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_data(out_dir: str | Path, seed: int = DATA_SEED) -> dict[str, Path]:
    """Write every data file of the toy task into ``out_dir``; returns kind -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, (name, _) in KINDS.items():
        path = out / name
        path.write_text(dumps_jsonl(generate_rows(kind, seed=seed)), encoding="utf-8")
        written[kind] = path
    return written


def load_rows(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------ metric, reward

_LEADING_INT = re.compile(r"\s*(-?\d+)")


def exact_match(completion: Any, answer: str) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer."""
    return float(completion_text(completion).strip() == str(answer).strip())


def leading_number(completion: Any) -> str | None:
    """The integer a completion starts with ("19 and more" -> "19"), or None."""
    m = _LEADING_INT.match(completion_text(completion))
    return m.group(1) if m else None


def answer_match(completion: Any, answer: str) -> float:
    """1.0 when the completion starts with the right number, whatever follows (a looser metric)."""
    return float(leading_number(completion) == str(answer).strip())


REWARD_EXACT = 1.0  # exactly the answer
REWARD_PREFIX = 0.5  # starts with the answer but goes on (did not stop cleanly)
REWARD_WELL_FORMED = 0.1  # a bare number of at most 3 digits, but the wrong one
_WELL_FORMED = re.compile(r"\d{1,3}")


def toy_reward(
    prompts: Sequence[Any] | None = None,
    completions: Sequence[Any] = (),
    answer: Sequence[str] = (),
    **kwargs: Any,
) -> list[float]:
    """Rule reward for GRPO/RLOO-style trainers (TRL reward-function signature).

    Per completion: 1.0 if it is exactly the answer; 0.5 if it starts with the answer but carries on;
    0.1 if it is a well-formed wrong answer (1-3 digits, nothing else); 0.0 otherwise. The partial
    credit gives RL a gradient towards short numeric answers before it finds the right ones.
    ``completions`` may be strings or conversational (lists of ``{"role", "content"}``).
    """
    if len(completions) != len(answer):
        raise ValueError(f"toy_reward got {len(completions)} completions but {len(answer)} answers")
    rewards = []
    for completion, ans in zip(completions, answer):
        text = completion_text(completion).strip()
        ans = str(ans).strip()
        if text == ans:
            rewards.append(REWARD_EXACT)
        elif leading_number(text) == ans:
            rewards.append(REWARD_PREFIX)
        elif _WELL_FORMED.fullmatch(text):
            rewards.append(REWARD_WELL_FORMED)
        else:
            rewards.append(0.0)
    return rewards


toy_reward.reward_range = (0.0, 1.0)  # declared for SPO's tracker (rl/baselines.rewards_range)


# ------------------------------------------------------------------------------- evaluation


def _as_messages(prompt: Any) -> list[Message]:
    """A row's prompt as a conversation: a plain string becomes one user message (the toy task is chat)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def generate_completions(
    model, tokenizer, rows: Sequence[dict], max_new_tokens: int = 8, batch_size: int = 32
) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) of the rows' prompts through the chat template:
    `model_scores.generate`, the generation every held-out metric uses."""
    prompts = [_as_messages(r["prompt"]) for r in rows]
    return model_scores.generate(model, tokenizer, prompts, max_new_tokens, batch_size)


def evaluate_task(
    model, tokenizer, rows: Sequence[dict], max_new_tokens: int = 8, batch_size: int = 32
) -> dict[str, float | int]:
    """Greedy-decode every prompt and score it against its answer.

    Returns ``exact_match`` (the headline metric), ``answer_match`` (starts with the right number),
    ``mean_reward`` (`toy_reward`) and ``n``. Works on a plain or a PEFT model; restores the
    model's train/eval mode.
    """
    rows = list(rows)
    if not rows:
        return {"exact_match": 0.0, "answer_match": 0.0, "mean_reward": 0.0, "n": 0}
    completions = generate_completions(model, tokenizer, rows, max_new_tokens, batch_size)
    answers = [str(r["answer"]) for r in rows]
    n = len(rows)
    return {
        "exact_match": sum(exact_match(c, a) for c, a in zip(completions, answers)) / n,
        "answer_match": sum(answer_match(c, a) for c, a in zip(completions, answers)) / n,
        "mean_reward": sum(toy_reward(None, completions, answers)) / n,
        "n": n,
    }


def _pair_texts(row: dict) -> tuple[list[Message], str, str]:
    """(prompt, chosen text, rejected text) of an eval or prefs row (chosen/rejected; or answer/rejected)."""
    chosen = row["chosen"] if "chosen" in row else row["answer"]
    return _as_messages(row["prompt"]), completion_text(chosen), completion_text(row["rejected"])


def completion_logprobs(
    model, tokenizer, prompts: Sequence[list[Message]], completions: Sequence[str]
) -> list[float]:
    """Sum of the log-probabilities of each assistant completion (its tokens and end of turn) after its prompt
    (`model_scores.sequence_scores`, as preference accuracy measures it in a run)."""
    answers = [assistant_message(text) for text in completions]
    return model_scores.sequence_scores(model, tokenizer, list(prompts), answers, reward_head=False)


def preference_accuracy(model, tokenizer, rows: Sequence[dict]) -> dict[str, float | int]:
    """How often a causal LM gives the right answer a higher log-probability than the wrong one.

    ``rows`` are eval rows (``answer``/``rejected``) or prefs rows (``chosen``/``rejected``). This is
    the metric DPO-style training moves most directly (greedy exact match can lag behind it).
    Returns ``preference_accuracy``, ``mean_logp_margin`` and ``n``.
    """
    triples = [_pair_texts(r) for r in rows]
    if not triples:
        return {"preference_accuracy": 0.0, "mean_logp_margin": 0.0, "n": 0}
    prompts = [t[0] for t in triples]
    good = completion_logprobs(model, tokenizer, prompts, [t[1] for t in triples])
    bad = completion_logprobs(model, tokenizer, prompts, [t[2] for t in triples])
    margins = [g - b for g, b in zip(good, bad)]
    return {
        "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        "mean_logp_margin": sum(margins) / len(margins),
        "n": len(margins),
    }


def reward_accuracy(reward_model, tokenizer, rows: Sequence[dict]) -> dict[str, float | int]:
    """How often a reward model (sequence classification, one label) scores the right answer above the wrong one.

    Conversations are rendered with the chat template as TRL's RewardTrainer does (prompt + answer,
    no generation prompt). Returns ``reward_accuracy``, ``mean_reward_margin`` and ``n``.
    """
    triples = [_pair_texts(r) for r in rows]
    if not triples:
        return {"reward_accuracy": 0.0, "mean_reward_margin": 0.0, "n": 0}
    prompts = [t[0] for t in triples]
    chosen, rejected = (
        model_scores.sequence_scores(
            reward_model, tokenizer, prompts, [assistant_message(t[i]) for t in triples], reward_head=True
        )
        for i in (1, 2)
    )
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {
        "reward_accuracy": sum(m > 0 for m in margins) / len(margins),
        "mean_reward_margin": sum(margins) / len(margins),
        "n": len(margins),
    }


# ------------------------------------------------------------------------------------- CLI


def _check(data_dir: Path) -> list[str]:
    problems = []
    for kind, (name, _) in KINDS.items():
        path = data_dir / name
        expected = dumps_jsonl(generate_rows(kind))
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != expected:
            problems.append(f"{path}: differs from what the generator writes")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m align_recipes.tiny.toytask", description="Write or check the toy task's data files."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the data files")
    w.add_argument("out_dir", type=Path)
    c = sub.add_parser("check", help="exit 1 if the data files differ from the generator's")
    c.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        for kind, path in write_data(args.out_dir).items():
            print(f"{path}  ({len(generate_rows(kind))} rows)")
        return 0
    problems = _check(args.data_dir)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
