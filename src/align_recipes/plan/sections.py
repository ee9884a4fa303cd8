"""The keys of a recipe's own sections (everything except `train:`, which is a TRL config).

Each section is a table of FieldInfo, so one validator checks recipes, profiles and overrides alike,
and `docs/recipes.md` is written from the same facts. Ranges for TRL's own fields that TRL only
checks after torch is imported (or never) are in TRAIN_RANGES.
"""

from __future__ import annotations

from align_recipes.plan.trl_fields import FieldInfo


def _f(name, kinds, default=None, choices=None, help=""):
    return FieldInfo(name, tuple(kinds.split()), default, tuple(choices) if choices else None, help)


TOP_LEVEL = {f.name: f for f in [
    _f("algorithm", "str", help="which algorithm runs: see `align-recipes list`"),
    _f("extends", "str list null", help="recipe file(s) this one inherits from, relative to this file"),
    _f("description", "str null", help="free text, shown by `show`"),
    _f("profile", "str null", "auto", help="hardware profile: auto (detect) or a name from configs/profiles"),
    _f("model", "dict", help="the model to train"),
    _f("data", "dict", help="training and evaluation data"),
    _f("rewards", "list null", help="reward functions for grpo/ppo/spo"),
    _f("evaluate", "dict null", help="a task metric measured before and after training"),
    _f("train", "dict", help="fields of the algorithm's TRL Config dataclass, by their TRL names"),
]}

MODEL = {f.name: f for f in [
    _f("name_or_path", "str", help="hub id, ModelScope id, local directory, or builtin:tiny-qwen2"),
    _f("source", "str", "auto", ["auto", "hf", "modelscope", "local"], "where name_or_path is fetched from"),
    _f("revision", "str null", help="hub branch, tag or commit"),
    _f("trust_remote_code", "bool", False, help="run model code from the hub; off unless you trust it"),
    _f("dtype", "str", "auto", ["auto", "float32", "bfloat16", "float16"], "weight/compute dtype"),
    _f("attn_implementation", "str null", None, ["eager", "sdpa", "flash_attention_2", "flash_attention_3"],
       "attention kernel; null lets the profile decide"),
    _f("adapter", "str", "full", ["full", "lora", "qlora"], "full fine-tuning, LoRA, or 4-bit QLoRA"),
    _f("lora", "dict", {}, help="LoRA settings: r, alpha, dropout, target_modules"),
    _f("quantization", "str", "none", ["none", "4bit", "8bit"], "bitsandbytes weight quantization"),
    _f("chat_template", "str null", help="a Jinja chat template, or a path to a .jinja file"),
]}

LORA = {f.name: f for f in [
    _f("r", "int", 16, help="LoRA rank"),
    _f("alpha", "int float", 32, help="LoRA scaling numerator"),
    _f("dropout", "float", 0.05, help="dropout on the LoRA path"),
    _f("target_modules", "str list", "all-linear", help="module names, or all-linear"),
    _f("modules_to_save", "list null", help="extra modules trained in full (e.g. score for reward models)"),
]}

DATA = {f.name: f for f in [
    _f("train", "dict", help="the training dataset"),
    _f("eval", "dict null", help="an evaluation dataset (TRL's eval_dataset)"),
]}

DATASET = {f.name: f for f in [
    _f("path", "str", help="local file/dir (jsonl, json, parquet, csv) or hub dataset id"),
    _f("split", "str", "train", help="split, with optional slicing: train_prefs[:1000]"),
    _f("source", "str", "auto", ["auto", "local", "hf", "modelscope"], "where path is loaded from"),
    _f("format", "str", "auto", help="auto-detect, or force a format name (docs/data.md)"),
    _f("columns", "dict null", help="rename source columns: {target: source}"),
    _f("name", "str null", help="hub dataset config name"),
    _f("max_drop_fraction", "float", 0.5, help="stop if more than this share of rows cannot be converted"),
    _f("drop_ties", "bool", False, help="preference data with scores: drop pairs whose scores are equal"),
]}

EVALUATE = {f.name: f for f in [
    _f("metric", "str", "exact_match", ["exact_match", "preference_accuracy"],
       "exact_match: greedy answers vs an answer column; preference_accuracy: reward(chosen) > reward(rejected)"),
    _f("data", "dict", help="a dataset section, as in data.train"),
    _f("max_new_tokens", "int", 16, help="generation budget for exact_match"),
    _f("limit", "int null", help="evaluate at most this many rows"),
]}

SECTIONS = {"": TOP_LEVEL, "model": MODEL, "model.lora": LORA, "data": DATA, "evaluate": EVALUATE}

# (low, high, low_inclusive) bounds for values TRL would only reject late, or never.
TRAIN_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0, None, False),
    "num_train_epochs": (0, None, False),
    "per_device_train_batch_size": (1, None, True),
    "per_device_eval_batch_size": (1, None, True),
    "gradient_accumulation_steps": (1, None, True),
    "warmup_steps": (0, None, True),
    "weight_decay": (0, None, True),
    "max_grad_norm": (0, None, True),
    "beta": (0, None, True),
    "max_length": (1, None, True),
    "max_completion_length": (1, None, True),
    "num_generations": (2, None, True),
    "temperature": (0, None, False),
    "top_p": (0, 1, False),
    "vllm_gpu_memory_utilization": (0, 1, False),
    "logging_steps": (0, None, False),
    "save_steps": (0, None, False),
}
LORA_RANGES = {"r": (1, None, True), "alpha": (0, None, False), "dropout": (0, 1, True)}
