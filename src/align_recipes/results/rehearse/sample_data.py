"""Rows for a rehearsal: the first rows of the recipe's real data when they can be read, else a synthetic
sample in the layout the recipe declares, named as such.

The synthetic rows copy the columns, value types and nesting of the datasets the shipped recipes name
(UltraFeedback binarized, UltraChat 200k, GSM8K, BelleGroup train_0.5M_CN), and for any other dataset
the layout its `format:` names or, by default, the plainest layout of the algorithm's data kind, with
the recipe's `columns:` mapping undone so that it applies as it would to the real data. Text is made
from a fixed seed: English for the English datasets, Chinese for BelleGroup, of mixed lengths so that
some rows are cut by `max_length` as real ones are.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

TRAIN_ROWS = 24
EVAL_ROWS = 2

# Dataset ids of the shipped recipes -> the layout their rows have.
KNOWN_LAYOUTS = {
    "huggingfaceh4/ultrafeedback_binarized": "ultrafeedback_binarized",
    "huggingfaceh4/ultrachat_200k": "ultrachat",
    "openai/gsm8k": "gsm8k",
    "gsm8k": "gsm8k",
    "ai-modelscope/train_0.5m_cn": "belle",
    "bellegroup/train_0.5m_cn": "belle",
}
# Data kind -> the plainest layout that serves it (see align_recipes.data.formats).
KIND_LAYOUTS = {
    "language_modeling": "messages",
    "preference": "preference",
    "unpaired": "unpaired",
    "prompt_only": "prompt_only",
}

_SUBJECTS = [
    "the garden",
    "a small bakery",
    "the river bridge",
    "an old library",
    "the train station",
    "a mountain village",
    "the science museum",
    "a football club",
    "the night market",
    "a quiet harbour",
]
_ACTIONS = [
    "plan a visit to",
    "write a short story about",
    "explain the history of",
    "list three facts about",
    "describe the morning at",
    "compare two seasons at",
    "give advice for working at",
    "summarise a day at",
]
_CLAUSES = [
    "Start with what people notice first",
    "keep the tone friendly and clear",
    "mention one practical detail",
    "then add a surprising fact",
    "end with a short suggestion",
    "use simple words where you can",
    "note what changes in the evening",
    "explain why it matters",
]
_ZH_SUBJECTS = [
    "春天的花园",
    "一家小面包店",
    "城市的地铁",
    "古老的图书馆",
    "山里的村庄",
    "周末的夜市",
    "海边的小镇",
    "学校的操场",
]
_ZH_ACTIONS = ["写一段介绍", "解释它的历史", "列出三个特点", "给出一些建议", "描述一天的变化", "比较两个季节"]
_ZH_CLAUSES = [
    "首先说明最重要的一点",
    "语言要简洁清楚",
    "再补充一个实际的例子",
    "最后给出一个小建议",
    "注意前后连贯",
    "可以提到人们的感受",
    "说明为什么这样做",
]


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_CLAUSES).capitalize()}, and {rng.choice(_CLAUSES)}."


def _english(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _chinese(rng: random.Random, sentences: int) -> str:
    return "".join(f"{rng.choice(_ZH_CLAUSES)}，{rng.choice(_ZH_CLAUSES)}。" for _ in range(sentences))


def _question(rng: random.Random) -> str:
    return f"Please {rng.choice(_ACTIONS)} {rng.choice(_SUBJECTS)}."


def _length(rng: random.Random, index: int) -> int:
    """Mostly short answers, every fourth one long enough to be cut by the rehearsal's 96-token max_length."""
    return rng.randint(12, 20) if index % 4 == 3 else 1


def _chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _row(layout: str, rng: random.Random, index: int) -> dict:
    prompt = _question(rng)
    good, bad = _english(rng, _length(rng, index)), _english(rng, 1)
    prompt_id = hashlib.sha256(prompt.encode()).hexdigest()
    if layout == "ultrafeedback_binarized":
        high = float(rng.randint(6, 10))
        chosen, rejected = _chat(prompt, good), _chat(prompt, bad)
        return {
            "prompt": prompt,
            "prompt_id": prompt_id,
            "chosen": chosen,
            "rejected": rejected,
            "messages": chosen,
            "score_chosen": high,
            "score_rejected": high - rng.randint(1, 5),
        }
    if layout == "ultrachat":
        follow = f"Thanks. Now {rng.choice(_ACTIONS)} {rng.choice(_SUBJECTS)}."
        return {
            "prompt": prompt,
            "prompt_id": prompt_id,
            "messages": _chat(prompt, good) + _chat(follow, _english(rng, rng.randint(1, 3))),
        }
    if layout == "gsm8k":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return {
            "question": f"A shop sells {a} apples in the morning and {b} in the afternoon. "
            "How many apples does it sell in the day?",
            "answer": f"In the morning {a}, in the afternoon {b}, so {a}+{b}=<<{a}+{b}={a + b}>>{a + b}.\n"
            f"#### {a + b}",
        }
    if layout == "belle":
        subject = rng.choice(_ZH_SUBJECTS)
        return {
            "instruction": f"请为{subject}{rng.choice(_ZH_ACTIONS)}。",
            "input": "",
            "output": _chinese(rng, _length(rng, index) * 2),
        }
    if layout in ("messages", "language_modeling"):
        return {"messages": _chat(prompt, good)}
    if layout == "sharegpt":
        return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": good}]}
    if layout == "alpaca":
        return {"instruction": prompt, "input": "", "output": good}
    if layout == "prompt_completion":
        return {"prompt": prompt, "completion": " " + good}
    if layout == "prompt_response":
        return {"prompt": prompt, "response": good}
    if layout == "text":
        return {"text": f"### Human: {prompt} ### Assistant: {good}"}
    if layout == "prompt_only":
        return {"prompt": prompt}
    if layout in ("preference", "implicit_preference", "hh_rlhf"):
        if layout == "implicit_preference":
            return {"chosen": _chat(prompt, good), "rejected": _chat(prompt, bad)}
        if layout == "hh_rlhf":
            return {
                "chosen": f"\n\nHuman: {prompt}\n\nAssistant: {good}",
                "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {bad}",
            }
        return {"prompt": prompt, "chosen": good, "rejected": bad}
    if layout == "unpaired":
        return {"prompt": prompt, "completion": good if index % 2 == 0 else bad, "label": index % 2 == 0}
    raise ValueError(f"no synthetic layout '{layout}'")


def synthetic_rows(layout: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{layout}:{seed}")
    return [_row(layout, rng, i) for i in range(n)]


def corpus() -> list[str]:
    """Text the stand-in tokenizer learns its merges from: every layout's synthetic text, fixed."""
    texts = []
    for layout in ("ultrafeedback_binarized", "ultrachat", "gsm8k", "belle"):
        for row in synthetic_rows(layout, 200, seed=99):
            texts.append(json.dumps(row, ensure_ascii=False))
    return texts


@dataclass
class Sample:
    """One split's rows for a rehearsal, where they came from, and the data entry that reads them."""

    rows: list[dict]
    origin: str  # shown on the screen
    synthetic: bool
    path: Path | None = None

    def entry(self, original: dict) -> dict:
        """The recipe's data entry pointed at the written file; columns/format/drop_ties kept."""
        kept = {
            k: v for k, v in original.items() if k in ("columns", "format", "drop_ties", "max_drop_fraction")
        }
        return {"path": str(self.path), "split": "train", "source": "local", **kept}


def layout_for(entry: dict, data_kind: str) -> tuple[str, str]:
    """(layout, why) for a data entry: the dataset's known layout, the recipe's format, or the kind's plainest."""
    path = str(entry.get("path", ""))
    known = KNOWN_LAYOUTS.get(path.lower())
    if known:
        return known, f"in {path}'s layout"
    fmt = entry.get("format")
    if fmt and fmt != "auto":
        return fmt, f"in the '{fmt}' layout the recipe names"
    return KIND_LAYOUTS[data_kind], f"in the plainest {data_kind} layout ({KIND_LAYOUTS[data_kind]})"


def _undo_columns(rows: list[dict], columns: dict | None) -> list[dict]:
    """`columns: {target: source}` renames the real data's columns; synthetic rows start from the targets."""
    if not columns:
        return rows
    return [{columns.get(k, k): v for k, v in row.items()} for row in rows]


def real_rows(entry: dict, base_dir: Path, n: int, online: bool) -> tuple[list[dict], str] | None:
    """The first n rows of the recipe's data: a local file, or (online) a streamed hub dataset. None if not
    reachable."""
    from align_recipes.data import DataSpec, peek
    from align_recipes.data.spec import locate

    try:
        spec = DataSpec.from_dict(dict(entry))
        where, target = locate(spec, base_dir)
    except Exception:
        return None
    if where == "local":
        try:
            rows = peek(spec, base_dir, n)
        except Exception:
            return None
        return (rows, f"first {len(rows)} rows of {target}") if rows else None
    if not online or where != "hf":
        return None
    try:
        import itertools

        import datasets

        from align_recipes.data.spec import split_parts

        split_name, _ = split_parts(spec.split)
        stream = datasets.load_dataset(str(target), spec.name, split=split_name, streaming=True)
        rows = [dict(r) for r in itertools.islice(stream, n)]
    except Exception:
        return None
    return (rows, f"first {len(rows)} rows of {target} (hub, streamed)") if rows else None


def sample(entry: dict, base_dir: Path, data_kind: str, n: int, online: bool, seed: int) -> Sample:
    found = real_rows(entry, base_dir, n, online)
    if found is not None:
        return Sample(rows=found[0], origin=found[1], synthetic=False)
    layout, why = layout_for(entry, data_kind)
    rows = _undo_columns(
        synthetic_rows(layout, n, seed),
        entry.get("columns") if layout in KIND_LAYOUTS.values() or entry.get("format") else None,
    )
    return Sample(
        rows=rows,
        origin=f"synthetic stand-in: {n} rows {why} (the real data is not reachable)",
        synthetic=True,
    )


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
