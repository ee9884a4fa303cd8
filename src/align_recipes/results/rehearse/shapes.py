"""The real architecture at rehearsal size: the recipe's model config with its layers cut to 2, random
weights, the real vocabulary and hidden sizes, saved as an ordinary model folder that `train` loads.

Where the architecture comes from, first found wins:
  1. a local model folder's config.json (the recipe names one, or a pipeline stage already wrote it);
  2. the Hugging Face hub or ModelScope, when online: config.json alone, never weights;
  3. the configs shipped in assets/architectures/ for the recipe families' models (works offline).
A recipe whose model is an earlier stage's output that does not exist yet (ppo.yaml starts from
outputs/…/sft/merged) is rehearsed with the model its `extends` chain names (the family's base model),
which that stage is trained from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from align_recipes.paths import built_in_place

BUILDER_VERSION = "1"
REHEARSAL_LAYERS = 2
SEED = 0
MARKER = "align_recipes_rehearsal.json"


@dataclass
class Architecture:
    """A model's full config (as config.json has it) and where it came from."""

    name: str  # what the recipe names (or the stand-in base it is rehearsed with)
    config: dict
    origin: str  # for the screen
    local_dir: Path | None = None  # a local model folder (its tokenizer may be there too)
    tokenizer_facts: dict = field(default_factory=dict)  # from a shipped asset: for the stand-in tokenizer

    @property
    def layers(self) -> int:
        return int(self.config.get("num_hidden_layers") or 0)


def shipped() -> dict[str, dict]:
    """Lower-case model id -> shipped asset (config + tokenizer facts)."""
    found = {}
    folder = resources.files("align_recipes").joinpath("assets", "architectures")
    for item in folder.iterdir():
        if item.name.endswith(".json"):
            data = json.loads(item.read_text("utf-8"))
            for model_id in data["ids"]:
                found[model_id.lower()] = data
    return found


def family_facts(config: dict) -> dict:
    """Tokenizer facts of the shipped model with the same vocabulary (for a stand-in tokenizer), or {}."""
    for asset in shipped().values():
        if asset["config"].get("vocab_size") == config.get("vocab_size") and asset["config"].get(
            "model_type"
        ) == config.get("model_type"):
            if asset["config"].get("hidden_size") == config.get("hidden_size"):
                return asset["tokenizer"]
    same_vocab = [a for a in shipped().values() if a["config"].get("vocab_size") == config.get("vocab_size")]
    return same_vocab[0]["tokenizer"] if same_vocab else {}


def _local_dir(name: str, base_dir: Path | None) -> Path | None:
    for candidate in (Path(name).expanduser(), (base_dir or Path.cwd()) / name):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _online_config(name: str, source: str) -> dict | None:
    """config.json from the hub (or ModelScope), when online; None otherwise."""
    try:
        if source == "modelscope":
            from modelscope.hub.file_download import model_file_download

            path = model_file_download(name, "config.json")
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name, "config.json")
        return json.loads(Path(path).read_text())
    except Exception:  # offline, unknown id, no modelscope: the shipped configs are next
        return None


def _cached_config(name: str) -> tuple[dict, Path] | None:
    """A config.json already in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(name, "config.json", local_files_only=True))
        return json.loads(path.read_text()), path.parent
    except Exception:
        return None


def resolve(
    name: str, source: str, base_dir: Path | None, online: bool, fallbacks: list[str] = ()
) -> Architecture:
    """The architecture for `name`; for a missing local folder, the first of `fallbacks` (the recipe's
    extends chain) that resolves. Raises LookupError naming what was tried."""
    local = _local_dir(name, base_dir)
    if local is not None:
        config = json.loads((local / "config.json").read_text())
        if "vocab_size" in config or "text_config" in config:
            return Architecture(name, config, f"config of the local folder {local}", local_dir=local)
    tried = [f"{name}: no local folder with config.json"]
    assets = shipped()
    for candidate in [name, *fallbacks]:
        if candidate != name and _local_dir(candidate, base_dir) is not None:
            return resolve(candidate, source, base_dir, online)
        cached = _cached_config(candidate)
        if cached is not None:
            return Architecture(
                candidate,
                cached[0],
                f"{candidate} config from the local Hugging Face cache",
                local_dir=cached[1],
                tokenizer_facts=family_facts(cached[0]),
            )
        if online:
            config = _online_config(candidate, source)
            if config is not None:
                return Architecture(
                    candidate,
                    config,
                    f"{candidate} config.json from "
                    f"{'ModelScope' if source == 'modelscope' else 'the hub'} (no weights)",
                    tokenizer_facts=family_facts(config),
                )
        asset = assets.get(candidate.lower())
        if asset is not None:
            return Architecture(
                candidate,
                dict(asset["config"]),
                f"{candidate} architecture shipped with align-recipes (offline)",
                tokenizer_facts=asset["tokenizer"],
            )
        tried.append(f"{candidate}: not cached{', not on the hub' if online else ' (offline)'}, not shipped")
    raise LookupError("; ".join(tried))


def cut_layers(config: dict, layers: int = REHEARSAL_LAYERS) -> dict:
    """The config with `layers` decoder layers; per-layer lists cut to match."""
    config = json.loads(json.dumps(config))
    target = config.get("text_config") if "text_config" in config else config
    target["num_hidden_layers"] = min(layers, int(target.get("num_hidden_layers") or layers))
    if isinstance(target.get("layer_types"), list):
        target["layer_types"] = target["layer_types"][: target["num_hidden_layers"]]
    if "max_window_layers" in target:
        target["max_window_layers"] = min(int(target["max_window_layers"]), target["num_hidden_layers"])
    return config


def full_parameter_count(config: dict) -> tuple[int, int]:
    """(all parameters, parameters of the decoder layers' linear projections) of the full model, counted on
    the meta device (no memory)."""
    import torch
    from torch import nn

    model_config = to_config(config)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    return total, linear


def to_config(config: dict):
    from transformers import AutoConfig

    data = dict(config)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def cache_root() -> Path:
    from align_recipes.tiny import default_cache_root

    return default_cache_root() / "rehearse"


def build(arch: Architecture, tokenizer_dir: Path, tokenizer_label: str) -> Path:
    """A cached model folder: `arch` cut to 2 layers, random weights (fixed seed), and the tokenizer from
    `tokenizer_dir`. Built in a temporary folder and renamed into place."""
    config = cut_layers(arch.config)
    key = hashlib.sha256(
        json.dumps(
            {"v": BUILDER_VERSION, "config": config, "seed": SEED, "tokenizer": _dir_digest(tokenizer_dir)},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    final = cache_root() / f"model-{_slug(arch.name)}-{key}"
    if (final / MARKER).is_file():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with built_in_place(final, MARKER) as tmp:
        model_config = to_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = AutoModelForCausalLM.from_config(model_config)
        with _quiet():
            model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "rehearsal_of": arch.name,
                    "layers": REHEARSAL_LAYERS,
                    "full_layers": arch.layers,
                    "tokenizer": tokenizer_label,
                    "weights": "random",
                },
                indent=1,
            )
            + "\n"
        )
    return final


def build_reward_stand_in(policy_dir: Path) -> Path:
    """A stand-in reward model (sequence classifier, one label) with the policy's rehearsal architecture and
    tokenizer, for a recipe whose reward model is an earlier stage's output that does not exist yet."""
    final = policy_dir.parent / f"reward-{policy_dir.name}"
    if (final / MARKER).is_file():
        return final
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    with built_in_place(final, MARKER) as tmp:
        config = AutoConfig.from_pretrained(str(policy_dir), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
        config.pad_token_id = tokenizer.pad_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + 1)
            model = AutoModelForSequenceClassification.from_config(config)
        with _quiet():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"reward_stand_in_for": str(policy_dir)}) + "\n")
    return final


def _quiet():
    from align_recipes.tiny import quiet_transformers

    return quiet_transformers()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name.strip("/").split("/")[-1])[:40]


def _dir_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*")):
        if path.is_file() and path.suffix in (".json", ".jinja", ".txt"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
