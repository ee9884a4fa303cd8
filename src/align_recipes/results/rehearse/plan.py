"""What a rehearsal changes in a recipe, and nothing else: stand-ins for what is not there yet (the model,
an earlier stage's reward model, the data) and caps that make each step take seconds. Everything else is
the recipe as `train` would run it, resolved by `recipe.load_plan` (validation and profile included).

Two plans are made: the *target* plan (the recipe under the chosen profile, with stand-ins only), whose
resolved values feed the GPU memory estimate, and the *run* plan (the target's adapter and quantization,
the cpu profile unless a GPU is here, the rehearsal model and data, `REHEARSAL_CAPS`), which trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.results.rehearse import sample_data, shapes
from align_recipes.results.rehearse import tokenizer as tokenizers


def offline() -> bool:
    """Offline unless told otherwise by the usual switches (HF_HUB_OFFLINE, ALIGN_RECIPES_OFFLINE)."""
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "ALIGN_RECIPES_OFFLINE")
    )


def _deep_merge(base: dict, top: dict) -> dict:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "columns":
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def _override(key: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return f"{key}={text[:-3].strip() if text.endswith('...') else text}"


@dataclass
class Draft:
    recipe: Path
    overrides: list[str]
    profile: str | None
    raw: dict  # the recipe's extends chain and overrides, merged, not validated
    model_names: list[str]  # model.name_or_path along the chain, nearest first
    algorithm: Any = None
    stand_ins: list[str] = field(default_factory=list)  # overrides standing in for missing things
    data_overrides: list[str] = field(default_factory=list)
    reward_note: str = ""
    target: Any = None  # the target Plan (after run_plan)
    caps: list[str] = field(default_factory=list)
    limits: dict = field(default_factory=dict)  # REHEARSAL_CAPS, or the caller's
    steps: int = 2

    @classmethod
    def read(cls, recipe: Path, overrides: list[str], profile: str | None) -> Draft:
        from align_recipes.plan.layers import override_layer, parse_override, read_chain
        from align_recipes.registry import ALGORITHMS

        if not recipe.is_file():
            raise RecipeError(
                f"recipe file '{recipe}' not found", file=recipe, fix="e.g. recipes/qwen05b/dpo.yaml"
            )
        raw: dict = {}
        names: list[str] = []
        for _, data in read_chain(recipe):
            layer = {k: v for k, v in data.items() if k != "extends"}
            name = (
                (layer.get("model") or {}).get("name_or_path")
                if isinstance(layer.get("model"), dict)
                else None
            )
            if name:
                names.insert(0, str(name))
            _deep_merge(raw, yaml.safe_load(yaml.safe_dump(_plain(layer), allow_unicode=True)))
        for text in overrides:
            parts, value = parse_override(text)
            _deep_merge(raw, override_layer(text))
            if parts == ["model", "name_or_path"]:
                names.insert(0, str(value))
        algorithm = ALGORITHMS.get(raw.get("algorithm"))
        if algorithm is None:
            from align_recipes.plan.load import load_plan

            load_plan(recipe, overrides, profile=profile)  # raises the usual unknown-algorithm error
        return cls(
            recipe=recipe,
            overrides=list(overrides),
            profile=profile,
            raw=raw,
            model_names=names,
            algorithm=algorithm,
        )

    # --- what the recipe says -----------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.recipe.resolve().parent.name

    @property
    def model(self) -> dict:
        return self.raw.get("model") or {}

    @property
    def train(self) -> dict:
        return self.raw.get("train") or {}

    @property
    def adapter(self) -> str:
        if self.target is not None:
            return self.target.model.adapter
        return self.model.get("adapter") or "profile's choice"

    @property
    def target_profile(self) -> str:
        if self.target is not None:
            return self.target.profile.name
        from align_recipes.plan import profiles

        return profiles.resolve(self.profile or "auto").name

    def describe(self) -> str:
        return f"{self.algorithm.name}: model {self.model.get('name_or_path')}, adapter {self.adapter}"

    # --- model and tokenizer ----------------------------------------------------------------------------
    def architecture(self, online: bool) -> shapes.Architecture:
        name = str(self.model.get("name_or_path") or "")
        if name.startswith("builtin:"):
            raise RecipeError(
                "the builtin tiny model already trains in seconds: rehearse is for real models",
                key="model.name_or_path",
                fix=f"run it: align-recipes train {self.recipe}",
            )
        fallbacks = [n for n in self.model_names if n != name]
        try:
            arch = shapes.resolve(
                name, str(self.model.get("source", "auto")), self.recipe.parent, online, fallbacks
            )
        except LookupError as exc:
            raise RecipeError(
                f"cannot find the architecture of '{name}': {exc}",
                key="model.name_or_path",
                fix="point model.name_or_path at a local folder with config.json, or go online "
                "(config.json alone is fetched, no weights)",
            ) from None
        if arch.name != name:
            self.stand_ins.append(_override("model.name_or_path", arch.name))
            arch.origin += f"; '{name}' does not exist yet (an earlier stage writes it)"
        return arch

    def tokenizer(self, arch: shapes.Architecture, online: bool) -> tuple[Path, str]:
        real = tokenizers.real_tokenizer_dir(arch.name, arch.local_dir, online)
        if real is not None:
            return real, f"the recipe's tokenizer ({real})"
        if not arch.tokenizer_facts:
            raise RecipeError(
                f"no tokenizer for '{arch.name}' offline, and no stand-in for its family",
                key="model.name_or_path",
                fix="go online once, or point at a local model folder",
            )
        folder = tokenizers.stand_in_dir(arch.tokenizer_facts, shapes.cache_root())
        return folder, (
            f"STAND-IN byte-level BPE with {arch.name}'s special tokens and chat template, "
            f"vocab {arch.config.get('vocab_size')} (the real tokenizer is not available offline)"
        )

    def build_model(self, arch: shapes.Architecture, tokenizer_dir: Path, label: str) -> Path:
        model_dir = shapes.build(arch, tokenizer_dir, label)
        path = self.train.get("reward_model_path")
        if path and self.algorithm.uses_rewards and not _exists(str(path), self.recipe.parent):
            stand_in = shapes.build_reward_stand_in(model_dir)
            self.stand_ins.append(_override("train.reward_model_path", str(stand_in)))
            self.reward_note = (
                f"; reward model '{path}' does not exist yet: a STAND-IN reward model of the same "
                "architecture (random weights) scores instead"
            )
        return model_dir

    # --- data -----------------------------------------------------------------------------------------------
    def write_data(self, workdir: Path, online: bool) -> str:
        """A sample of each source the recipe names (a mixture's sources each get theirs), and held-out rows."""
        data = self.raw.get("data") or {}
        train = _sources(data.get("train"))
        if not train:
            raise RecipeError(
                "the recipe has no data.train",
                key="data.train",
                file=self.recipe,
                fix="add data: {train: {path: …}}",
            )
        texts = []
        splits = {"train": (train, sample_data.TRAIN_ROWS, 0)}
        if data.get("eval"):
            splits["eval"] = (_sources(data["eval"]), sample_data.EVAL_ROWS, 1)
        for split, (entries, rows, seed) in splits.items():
            written = []
            for index, entry in enumerate(entries):
                sample = sample_data.sample(
                    entry, self.recipe.parent, self.algorithm.data_kind, rows, online, seed
                )
                name = f"{split}.jsonl" if len(entries) == 1 else f"{split}-{index}.jsonl"
                sample.path = sample_data.write_jsonl(sample.rows, workdir / "data" / name)
                written.append({**sample.entry(entry), "name": None})
                texts.append(f"{split}{'' if len(entries) == 1 else f'[{index}]'}: {sample.origin}")
            self.data_overrides.append(
                _override(f"data.{split}", written[0] if len(written) == 1 else written)
            )
        if "eval" not in splits:
            entry = train[0]
            sample = sample_data.sample(
                entry, self.recipe.parent, self.algorithm.data_kind, sample_data.EVAL_ROWS, False, seed=7
            )
            sample.path = sample_data.write_jsonl(sample.rows, workdir / "data" / "eval.jsonl")
            self.data_overrides.append(_override("data.eval", {**sample.entry(entry), "name": None}))
            texts.append("eval: the recipe has none; rehearsal-only held-out rows like the train sample")
        return "\n".join(texts)

    # --- plans ----------------------------------------------------------------------------------------------
    def target_plan(self, profile: str | None = None):
        from align_recipes.plan.load import load_plan

        return load_plan(self.recipe, [*self.overrides, *self.stand_ins], profile=profile or self.profile)

    def run_plan(self, model_dir: Path, workdir: Path):
        from align_recipes.plan import trl_fields
        from align_recipes.plan.load import load_plan
        from align_recipes.results.rehearse import REHEARSAL_CAPS, REHEARSAL_SETS

        self.target = self.target_plan()
        target_model = self.target.model
        fields = trl_fields.config_fields(self.algorithm.config_name)
        effective = self.target.effective_config()
        extra = [
            _override("model.name_or_path", str(model_dir)),
            "model.source=local",
            _override("model.adapter", target_model.adapter),
            _override("model.quantization", target_model.quantization),
        ]
        self.caps = []
        for key, cap in (self.limits or REHEARSAL_CAPS).items():
            value = effective.get(key, (None,))[0]
            if key in fields and isinstance(value, int) and not isinstance(value, bool) and value > cap:
                extra.append(_override(f"train.{key}", cap))
                self.caps.append(f"{key} {value}→{cap}")
        for key, value in REHEARSAL_SETS.items():
            if key not in fields or (value is None and key not in self.target.train):
                continue
            value = self.steps if key in ("max_steps", "save_steps") else value
            before = effective.get(key, (None,))[0]
            extra.append(_override(f"train.{key}", value))
            if key in ("max_steps", "gradient_accumulation_steps") and before != value:
                self.caps.append(f"{key} {before}→{value}")
        extra += [
            _override("train.eval_strategy", "steps"),
            _override("train.output_dir", str(workdir / "run")),
        ]
        profile = self.profile if _cuda() else "cpu"
        return load_plan(
            self.recipe, [*self.overrides, *self.stand_ins, *self.data_overrides, *extra], profile=profile
        )

    def plan_note(self, run_plan) -> str:
        return (
            f"validated under profile {self.target.profile.name} (as train would) and {run_plan.profile.name} "
            f"(the rehearsal); cut for speed: {', '.join(self.caps) or 'nothing'}"
        )

    def estimates(self, arch: shapes.Architecture) -> list[tuple[str, Any]]:
        """(profile, Estimate | why it is refused) for the target profile, or every GPU profile from CPU."""
        from align_recipes.results.rehearse import GPU_PROFILES
        from align_recipes.results.rehearse.memory import estimate

        params, linear = shapes.full_parameter_count(arch.config)
        names = [self.target.profile.name] if self.target.profile.gpu is not None else list(GPU_PROFILES)
        found = []
        for name in names:
            try:
                plan = self.target if name == self.target.profile.name else self.target_plan(name)
            except (RecipeError, RecipeErrors) as exc:
                found.append((name, "refused by validate: " + " ".join(exc.render().split())[:160]))
                continue
            train = {k: v for k, (v, _) in plan.effective_config().items()}
            found.append(
                (
                    name,
                    estimate(arch.config, params, linear, self.algorithm, plan.model, train, plan.profile),
                )
            )
        return found


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _exists(path: str, base_dir: Path) -> bool:
    return any(p.is_dir() for p in (Path(path).expanduser(), base_dir / path))


def _plain(value: Any) -> Any:
    from align_recipes.plan.yamlio import plain

    return plain(value)


def describe_architecture(arch: shapes.Architecture) -> str:
    c = arch.config.get("text_config") or arch.config
    return (
        f"{arch.name}: {c.get('model_type')} hidden {c.get('hidden_size')}, vocab {c.get('vocab_size')}, "
        f"{shapes.REHEARSAL_LAYERS} of {c.get('num_hidden_layers')} layers, random weights "
        f"({arch.origin})"
    )


def _sources(value) -> list[dict]:
    """A data split as a list of source mappings: a path, a mapping, or a mixture's list of them."""
    items = value if isinstance(value, list) else [value] if value else []
    return [
        {"path": item} if isinstance(item, str) else dict(item)
        for item in items
        if isinstance(item, (str, dict))
    ]
