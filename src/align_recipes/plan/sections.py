"""The recipe's own sections (everything except `train:`, which is a TRL config), as dataclasses.

Each field's metadata says which YAML kinds it accepts, its choices and a help line. The one
checker (`validate`) reads those facts through `fields_of`, `docs/recipes.md` describes the same
fields, and the `Plan` carries the instances: a default is written once, here, and nobody
downstream writes `.get("adapter", "full")` again. Dataset entries are `data.spec.DataSpec`,
described the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from align_recipes.data.audit import FINDINGS
from align_recipes.data.spec import DataSpec, source_entries
from align_recipes.fields import fields_of, spec
from align_recipes.registry import (
    EXACT_MATCH,
    IMPLICIT_REWARD_ACCURACY,
    PREFERENCE,
    PREFERENCE_ACCURACY,
    PROMPT_ONLY,
    REWARD,
)


def _build(cls, values: dict | None, nested: dict | None = None):
    """An instance from validated recipe values; missing keys take the dataclass defaults."""
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in (values or {}).items() if k in known}
    for name, build in (nested or {}).items():
        kwargs[name] = build(kwargs.get(name))
    return cls(**kwargs)


ADAPTERS = ("full", "lora", "qlora")
ADAPTER_WORDS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA 4-bit"}  # as messages name them


def quantization_for(adapter: str | None, quantization: str | None = None) -> str | None:
    """The base weights' quantization: QLoRA is 4-bit by definition (the one place that says so)."""
    return "4bit" if adapter == "qlora" else quantization


@dataclass(frozen=True, kw_only=True)
class LoraSection:
    r: int = spec(16, "int", "LoRA rank")
    alpha: float = spec(32, "int float", "LoRA scaling numerator")
    dropout: float = spec(0.05, "float", "dropout on the LoRA path")
    target_modules: str | list = spec("all-linear", "str list", "module names, or all-linear")
    modules_to_save: list | None = spec(
        None, "list null", "extra modules trained in full (reward models: the score head)"
    )

    @classmethod
    def from_dict(cls, values: dict | None) -> LoraSection:
        return _build(cls, values)


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    name_or_path: str = spec(kinds="str", help="hub id, ModelScope id, local directory, or builtin:<name>")
    source: str = spec(
        "auto", "str", "where name_or_path is fetched from", ["auto", "hf", "modelscope", "local"]
    )
    revision: str | None = spec(None, "str null", "hub branch, tag or commit")
    trust_remote_code: bool = spec(False, "bool", "run model code from the hub; off unless you trust it")
    dtype: str = spec("auto", "str", "weight/compute dtype", ["auto", "float32", "bfloat16", "float16"])
    attn_implementation: str | None = spec(
        None,
        "str null",
        "attention kernel; null lets the profile decide",
        ["eager", "sdpa", "flash_attention_2", "flash_attention_3"],
    )
    adapter: str = spec("full", "str", "full fine-tuning, LoRA, or 4-bit QLoRA", ADAPTERS)
    lora: LoraSection = spec(
        kinds="dict", help="LoRA settings: r, alpha, dropout, target_modules", factory=LoraSection
    )
    quantization: str = spec("none", "str", "bitsandbytes weight quantization", ["none", "4bit", "8bit"])
    chat_template: str | None = spec(None, "str null", "a Jinja chat template, or a path to a .jinja file")

    @property
    def quantized(self) -> str:
        """The base weights' quantization: QLoRA is 4-bit by definition."""
        return quantization_for(self.adapter, self.quantization)

    @classmethod
    def from_dict(cls, values: dict | None) -> ModelSection:
        return _build(cls, values, {"lora": LoraSection.from_dict})


@dataclass(frozen=True, kw_only=True)
class AuditSection:
    """The data audit every preference, KTO and reward run starts with (data/audit.py, docs/data.md)."""

    fail_on: list = spec(
        kinds="list",
        help="audit findings that stop the run before training: "
        + ", ".join(FINDINGS)
        + "; [] (default): none",
        factory=list,
    )

    @classmethod
    def from_dict(cls, values: dict | None) -> AuditSection:
        return _build(cls, values)


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """Each split is a list of sources (a mapping in the recipe is a list of one), mixed by their weights."""

    train: list[DataSpec] = spec(kinds="dict list", help="the training dataset, or a list of sources to mix")
    eval: list[DataSpec] = spec(
        None, "dict list null", "an evaluation dataset (TRL's eval_dataset), or a list of sources to mix"
    )
    audit: AuditSection = spec(
        kinds="dict null",
        help="preference, KTO and reward runs: which findings of the data audit stop the run (fail_on)",
        factory=AuditSection,
    )

    @classmethod
    def from_dict(cls, values: dict | None) -> DataSection:
        values = values or {}
        return cls(
            **{
                split: [
                    DataSpec.from_dict(entry, section=name)
                    for name, entry in source_entries(values.get(split), f"data.{split}")
                ]
                for split in ("train", "eval")
            },
            audit=AuditSection.from_dict(values.get("audit")),
        )


# Held-out metric -> the data kind its rows are read as (run/measure.py measures them).
METRIC_KINDS = {
    EXACT_MATCH: PROMPT_ONLY,
    PREFERENCE_ACCURACY: PREFERENCE,
    IMPLICIT_REWARD_ACCURACY: PREFERENCE,
    REWARD: PROMPT_ONLY,
}
METRICS = tuple(METRIC_KINDS)


ON_HACKING = ("warn", "stop", "rollback")


@dataclass(frozen=True, kw_only=True)
class HarnessSection:
    """lm-evaluation-harness tasks measured on the start model and on the result (run/harness.py): the
    general ability next to the task metric."""

    tasks: list = spec(
        kinds="list",
        help="lm-eval tasks: local task files (.yaml, relative to the recipe file; offline with "
        "`dataset_path: json`) or, online, task/group names from lm-eval's catalogue (e.g. hellaswag)",
    )
    limit: int | None = spec(None, "int null", "evaluate at most this many documents per task; null: all")
    num_fewshot: int | None = spec(None, "int null", "few-shot examples per prompt; null: each task's own")
    batch_size: int = spec(16, "int", "documents per forward pass")
    apply_chat_template: bool = spec(
        False, "bool", "render prompts through the model's chat template (chat-tuned models; lm-eval's flag)"
    )

    @classmethod
    def from_dict(cls, values: dict | None) -> HarnessSection | None:
        return None if values is None else _build(cls, values)


@dataclass(frozen=True, kw_only=True)
class EvaluateSection:
    metric: str | list | None = spec(
        None,
        "str list null",
        "one metric or a list: exact_match (greedy answers vs an `answer` column), "
        "preference_accuracy (held-out pairs: chosen scores above rejected), implicit_reward_accuracy (the same "
        "by log π/π_ref against the start model), reward (mean reward of greedy answers by the recipe's "
        "rewards); null: the algorithm's own (`align-recipes list`)",
        METRICS,
    )
    data: DataSpec = spec(kinds="dict", help="a dataset section, as in data.train")
    max_new_tokens: int = spec(16, "int", "generation budget for exact_match and reward")
    limit: int | None = spec(None, "int null", "evaluate at most this many rows")
    watch_every: int | None = spec(
        None,
        "int null",
        "reward-hacking watch (algorithms that generate): measure the held-out metric every this "
        "many steps on watch_rows rows and warn when it falls while the sampled reward rises; null: about 10 "
        "checks per run; 0: off",
    )
    watch_rows: int = spec(
        100, "int", "how many evaluate.data rows (the first ones) the reward-hacking watch measures"
    )
    harness: HarnessSection | None = spec(
        None, "dict null", "lm-evaluation-harness tasks run before and after training: tasks, limit, …"
    )
    on_hacking: str = spec(
        "warn",
        "str",
        "what the reward-hacking watch does when it warns: warn (and go on), stop (save and end the run, status "
        "stopped_hacking), rollback (restore the policy at the watch's best check before the fall, then stop)",
        ON_HACKING,
    )

    @property
    def metrics(self) -> list[str]:
        """The metrics to measure, in order (the first is the headline)."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric or [])

    @classmethod
    def from_dict(cls, values: dict | None) -> EvaluateSection | None:
        """From a validated section (validation fills a missing `metric:` with the algorithm's metrics)."""
        if not values:
            return None
        values = dict(values)
        values["data"] = DataSpec.from_dict(values["data"], section="evaluate.data")
        return _build(cls, values, {"harness": HarnessSection.from_dict})


@dataclass(frozen=True, kw_only=True)
class RecipeFile:
    """The top level of a recipe file (the sections above, plus what is not a section)."""

    algorithm: str = spec(kinds="str", help="which algorithm runs: see `align-recipes list`")
    extends: str | list | None = spec(
        None, "str list null", "recipe file(s) this one inherits from, relative to this file"
    )
    description: str | None = spec(None, "str null", "free text, shown by `show`")
    profile: str | None = spec(
        "auto", "str null", "hardware profile: auto (detect) or a name from configs/profiles"
    )
    reproducible: bool | None = spec(
        None,
        "bool null",
        "pin CPU kernels, threads and deterministic algorithms so the same seed gives the same weights on "
        "any x86-64 CPU of one maker (align_recipes/reproducible.py); default: on for the builtin models, "
        "off otherwise",
    )
    model: dict = spec(kinds="dict", help="the model to train", factory=dict)
    data: dict = spec(kinds="dict", help="training and evaluation data", factory=dict)
    rewards: list | None = spec(None, "list null", "reward functions, for the algorithms that take them")
    evaluate: dict | None = spec(None, "dict null", "a task metric measured before and after training")
    train: dict = spec(
        kinds="dict", help="fields of the algorithm's TRL Config dataclass, by their TRL names", factory=dict
    )


TOP_LEVEL = fields_of(RecipeFile)
MODEL = fields_of(ModelSection)
LORA = fields_of(LoraSection)
DATA = fields_of(DataSection)
AUDIT = fields_of(AuditSection)
DATASET = fields_of(DataSpec)
EVALUATE = fields_of(EvaluateSection)
HARNESS = fields_of(HarnessSection)

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
    "vllm_tensor_parallel_size": (1, None, True),
    "vllm_max_num_seqs": (1, None, True),
    "logging_steps": (0, None, False),
    "save_steps": (0, None, False),
}
EVALUATE_RANGES = {
    "watch_every": (0, None, True),
    "watch_rows": (2, None, True),
    "limit": (1, None, True),
    "max_new_tokens": (1, None, True),
}
HARNESS_RANGES = {"limit": (1, None, True), "num_fewshot": (0, None, True), "batch_size": (1, None, True)}
LORA_RANGES = {"r": (1, None, True), "alpha": (0, None, False), "dropout": (0, 1, True)}
DATASET_RANGES = {"max_drop_fraction": (0, 1, True)}
