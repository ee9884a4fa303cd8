"""Rows that cannot train, caught after the trainer is built and before its first step.

TRL's trainers tokenize the converted rows when they are built, and drop (or leave without a single
trained token) the ones that do not fit `train.max_length` (TRL 1.16):

    DPOTrainer, KTOTrainer   drop a row whose prompt alone fills max_length (keep_start truncation)
    RewardTrainer            drops a pair whose chosen or rejected text is longer than max_length
    SFTTrainer               drops a row whose trained tokens all lie past max_length
    ORPOTrainer              keeps the row, its completion cut to nothing (no trained token)

When nothing is left the Trainer would fail inside its sampler (`num_samples=0`) or train on nothing.
`check_trainable_rows` stops the run first, with the rows lost to each cause (conversion and length)
and the max_length that would keep the shortest row; a partial loss is one note line.
"""

from __future__ import annotations

from typing import Any

from align_recipes import console
from align_recipes.data import DataError
from align_recipes.run.rundir import is_main_process

MEASURED_ROWS = 5000  # rows tokenized to find the shortest one (only when no row is left)


def check_trainable_rows(plan, parts, trainer) -> None:
    """Raise DataError (exit 2) when a split has no row left that trains; print a note when some were lost."""
    for split, converted, prepared in (
        ("train", parts.train_dataset, getattr(trainer, "train_dataset", None)),
        ("eval", parts.eval_dataset, getattr(trainer, "eval_dataset", None)),
    ):
        if converted is None or prepared is None or not hasattr(prepared, "__len__"):
            continue
        usable = trainable_count(prepared)
        lost = len(converted) - usable
        if usable > 0:
            if lost > 0 and not plan.train.get("packing") and is_main_process():  # packed rows are fewer
                console.note(
                    f"data.{split}: {plan.algorithm.trainer_name} leaves {lost} of {len(converted)} rows "
                    f"out: {length_rule(plan)}"
                )
            continue
        raise no_rows_left(plan, parts, split, converted)


def trainable_count(prepared) -> int:
    """Rows of a prepared dataset that hold at least one trained token. Most trainers drop the others; ORPO
    keeps them with every label masked (-100)."""
    columns = getattr(prepared, "column_names", None) or []
    if "chosen_labels" in columns:
        return sum(any(label != -100 for label in labels) for labels in prepared["chosen_labels"])
    return len(prepared)


def whole_sequence_rule(plan) -> bool:
    """Reward models drop pairs longer than max_length; the policies lose rows whose prompt fills it."""
    return plan.algorithm.model_head == "reward"


def length_rule(plan) -> str:
    max_length = plan.train.get("max_length")
    if max_length is None:
        return "the trainer dropped them while preparing the data"
    if whole_sequence_rule(plan):
        return f"longer than train.max_length ({max_length} tokens)"
    return f"the prompt alone fills train.max_length ({max_length} tokens), leaving no token to train on"


def no_rows_left(plan, parts, split: str, converted) -> DataError:
    """The error for a split whose every row is gone: the causes with their counts, and the fix."""
    section = f"data.{split}"
    report = (getattr(parts, "reports", None) or {}).get(split)
    read = report.rows_in if report is not None else len(converted)
    parts_of = [f"{read} rows read"]
    if report is not None and report.rows_dropped:
        parts_of.append(f"{report.rows_dropped} could not be converted ({report.reasons_text()})")
    if report is not None and getattr(report, "rows_left_out", 0):
        parts_of.append(f"the weights left {report.rows_left_out} out")
    left = (
        "the other"
        if report is not None and (report.rows_dropped or getattr(report, "rows_left_out", 0))
        else "all"
    )
    parts_of.append(f"{plan.algorithm.trainer_name} leaves out {left} {len(converted)}: {length_rule(plan)}")
    specs = getattr(plan.data, split)
    use = "train on" if split == "train" else "evaluate on"
    return DataError(
        f"no row is left to {use}: " + "; ".join(parts_of),
        key=section,
        file=specs[0].path if len(specs) == 1 else None,
        fix=length_fix(plan, parts.tokenizer, converted),
    )


def length_fix(plan, tokenizer, converted) -> str:
    max_length = plan.train.get("max_length")
    if max_length is None:
        return "check the data: the rows lose every trained token when the trainer prepares them"
    measured = list(converted.select(range(min(len(converted), MEASURED_ROWS))))
    whole = whole_sequence_rule(plan)
    lengths = [row_tokens(tokenizer, row)[1 if whole else 0] for row in measured]
    file, line = plan.provenance.locate("train.max_length")
    where = f" ({file}{f':{line}' if line else ''})" if file else ""
    if not lengths:
        return f"check the data and train.max_length{where}"
    shortest = min(lengths)
    which = "row" if whole else "prompt"
    of = f" of the first {len(measured)}" if len(measured) < len(converted) else ""
    need = shortest if whole else shortest + 1
    return (
        f"raise train.max_length{where} from {max_length} to at least {need}: the shortest {which}{of} is "
        f"{shortest} tokens; or shorten the {which}s"
    )


def _tokens(tokenizer, value: Any, generation_prompt: bool = False) -> int:
    if isinstance(value, list):
        if not value:
            return 0
        encoded = tokenizer.apply_chat_template(
            value, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
        )
        return len(encoded["input_ids"])
    return len(tokenizer(text=str(value or ""))["input_ids"]) if value else 0


def row_tokens(tokenizer, row: dict) -> tuple[int, int]:
    """(tokens before the first trained one, tokens of the longest full sequence) of a converted row, as
    TRL's trainers tokenize it: chats through the chat template, plain text as it is."""
    if "text" in row:
        return 0, _tokens(tokenizer, row["text"])
    if "messages" in row:
        messages = row["messages"]
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
        return _tokens(tokenizer, messages[:first], generation_prompt=True), _tokens(tokenizer, messages)
    prompt = row.get("prompt")
    replies = [row[c] for c in ("chosen", "rejected", "completion") if row.get(c) is not None]
    conversational = isinstance(prompt, list)
    prompt_len = _tokens(tokenizer, prompt, generation_prompt=conversational)
    full = max(
        (_tokens(tokenizer, prompt + reply if conversational else f"{prompt}{reply}") for reply in replies),
        default=prompt_len,
    )
    return prompt_len, full
