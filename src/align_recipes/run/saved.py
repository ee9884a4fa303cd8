"""Open a saved run folder: what it holds (`inspect_run`, without loading weights) and
the model plus tokenizer ready for inference (`load_run`): for chat, merge and eval, and for the
metric after a sharded run (measured on the folder it saved).

A full fine-tune is loaded as it is; a LoRA/QLoRA adapter is loaded on its base model (the resolved
recipe's `model.name_or_path`, `builtin:` models included, else adapter_config.json's
`base_model_name_or_path`), un-quantized in the run's compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.paths import find_local, looks_like_hub_id, read_json
from align_recipes.plan.sections import EvaluateSection, ModelSection
from align_recipes.run import models
from align_recipes.run.rundir import MANIFEST, RunDir

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class RunInfo:
    """What a run directory holds, read from its files without loading weights."""

    run_dir: Path
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe.resolved.yaml (empty for a plain model dir)
    summary: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = None  # adapter_config.json
    head: str = "causal_lm"  # or "reward"

    @property
    def algorithm(self) -> str | None:
        return self.recipe.get("algorithm") or self.summary.get("algorithm")

    @property
    def model(self) -> ModelSection:
        """The run's model section, with defaults (empty name_or_path for a plain model folder) and its
        model path as it opens from here."""
        section = {"name_or_path": "", **(self.recipe.get("model") or {})}
        section["name_or_path"] = self.locate(section["name_or_path"])
        return ModelSection.from_dict(section)

    @property
    def evaluate(self) -> EvaluateSection | None:
        """The run's evaluate: section with its defaults (None when the recipe had none)."""
        return EvaluateSection.from_dict(self.recipe.get("evaluate"))

    @property
    def search_dirs(self) -> list[Path]:
        """Where a relative path of the run's recipe may be, in the order training looked: the recipe's
        folder, the directory the run was started in; then the current directory and the run folder.
        Runs record found paths as absolute; this is for run folders written before they did, and for
        paths that existed nowhere when the run started."""
        manifest = read_json(self.run_dir / MANIFEST)
        started_in = manifest.get("cwd")
        recipe = self.summary.get("recipe") or manifest.get("recipe")
        dirs = []
        if recipe:
            folder = Path(recipe).parent
            dirs.append(Path(started_in) / folder if started_in and not folder.is_absolute() else folder)
        if started_in:
            dirs.append(Path(started_in))
        return list(dict.fromkeys([*dirs, Path.cwd(), self.run_dir]))

    @property
    def base_dir(self) -> Path:
        """The folder the run's recipe lived in (relative data and model paths resolve against it first)."""
        return self.search_dirs[0]

    def locate(self, name: str) -> str:
        """A path the run's recipe names, absolute where it exists in `search_dirs`; anything else (a hub id,
        builtin:…, an absolute path) unchanged."""
        if not name or ":" in name.split("/")[0]:
            return name
        found = find_local(name, *self.search_dirs)
        return str(found) if found is not None else name


def inspect_run(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"model directory '{run_dir}' not found", fix="pass a run's train.output_dir")
    adapter = read_json(run_dir / ADAPTER_CONFIG) if (run_dir / ADAPTER_CONFIG).is_file() else None
    if adapter is None and not (run_dir / "config.json").is_file():
        raise RecipeError(
            f"'{run_dir}' holds no model (no config.json, no {ADAPTER_CONFIG})",
            fix="pass the output directory of a finished run (summary.json says status: complete)",
        )
    folder = RunDir(run_dir)
    info = RunInfo(
        run_dir=run_dir, recipe=folder.resolved_recipe(), summary=folder.summary(), adapter=adapter
    )
    config = read_json(run_dir / "config.json")
    if (
        info.algorithm == "reward"
        or (adapter or {}).get("task_type") == "SEQ_CLS"
        or any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    ):
        info.head = "reward"
    return info


def base_model_path(info: RunInfo) -> str:
    """Where an adapter's base model is: built/resolved from the recipe, else adapter_config's path."""
    spec = info.model
    if spec.name_or_path:
        try:
            return models.resolve_model_path(spec, info.base_dir)
        except RecipeError:
            pass
    base = (info.adapter or {}).get("base_model_name_or_path")
    if base and (Path(base).is_dir() or looks_like_hub_id(base)):
        return base
    from align_recipes import tiny

    builtin = tiny.builtin_of_cache_dir(base) if base else None
    if builtin:  # a builtin's cache directory from another machine or cache: build it here
        return str(tiny.ensure_builtin(builtin))
    raise RecipeError(
        f"cannot find the base model of the adapter in '{info.run_dir}' (base: {base!r})",
        fix="make the base model available at that path (or as a hub id) and try again",
    )


def compute_dtype(info: RunInfo, device: str):
    """The dtype to load the run's weights in on `device` (fp32 on CPU for anything half precision)."""
    import torch

    name = info.model.dtype
    if name == "auto":
        return torch.float32 if device == "cpu" else "auto"
    dtype = models.torch_dtype(name)
    return torch.float32 if device == "cpu" and dtype == torch.float16 else dtype


def load_run(run_dir: str | Path, head: str | None = None, device: str | None = None):
    """(model, tokenizer, info), ready for inference; adapters stay attached (PeftModel)."""
    models.quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    info = inspect_run(run_dir)
    head = head or info.head
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(info.run_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": compute_dtype(info, device)}
    if head == "reward":
        cls, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    else:
        cls = AutoModelForCausalLM
    trust = info.model.trust_remote_code
    if info.adapter is None:
        model = cls.from_pretrained(str(info.run_dir), trust_remote_code=trust, **kwargs)
    else:
        from peft import PeftModel

        # QLoRA: the base is loaded un-quantized in the compute dtype; the adapter's weights apply as they are.
        base = cls.from_pretrained(base_model_path(info), trust_remote_code=trust, **kwargs)
        if head == "reward":
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, str(info.run_dir))
    if head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer, info
