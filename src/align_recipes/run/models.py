"""Tokenizer and model loading: where the weights come from, in which dtype, quantized or not, with
which adapter. Imports torch on demand; the run and the post-training verbs call it."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.paths import find_local, looks_like_hub_id
from align_recipes.plan.hardware import sharding
from align_recipes.plan.sections import ModelSection

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


def quiet_libraries() -> None:
    """Keep the console for our own report: library chatter that users cannot act on is muted."""
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    # transformers 5 renames gradient_checkpointing; TRL 1.16 still sets the old name itself.
    warnings.filterwarnings(
        "ignore", category=FutureWarning, message=".*deprecated and will be removed in v6.*"
    )
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # datasets reads this when it is first imported (a value the user set wins, as it does over
    # disable_progress_bars()): chat and export never read a dataset, and importing it only to mute it
    # cost each of them about 0.7 CPU s.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def resolve_model_path(spec: ModelSection, base_dir: Path | None = None) -> str:
    """A local directory or a hub id that `from_pretrained` can open, per `model.source`.

    builtin:… → built locally on first use (the tiny model, the tiny SFT policy); local → must exist;
    modelscope → downloaded with modelscope's snapshot_download into its cache, then loaded as a local
    directory; hf → the hub id; auto → an existing local directory wins, otherwise a Hugging Face hub id (an
    existing local directory wins over modelscope too).
    """
    name, source = spec.name_or_path, spec.source
    if name.startswith(BUILTIN_PREFIX):
        from align_recipes import tiny

        if name not in tiny.BUILTIN_MODELS:
            raise RecipeError(
                f"unknown builtin model '{name}'",
                key="model.name_or_path",
                fix=f"builtin models: {', '.join(tiny.BUILTIN_MODELS)}",
            )
        return str(tiny.ensure_builtin(name))
    local = find_local(name, base_dir, None)
    local = local if local is not None and local.is_dir() else None
    # An existing local folder wins over a hub source: a recipe family may say `source: modelscope` for its base
    # model while one stage names a folder an earlier stage wrote (qwen15b/ppo.yaml).
    if source == "local" or (source in ("auto", "modelscope") and local is not None):
        if local is None:
            raise RecipeError(
                f"model directory '{name}' not found",
                key="model.name_or_path",
                fix="check the path, or set model.source: hf / modelscope for a hub id",
            )
        return str(local)
    if source == "modelscope":
        return modelscope_download(name, spec.revision)
    if not looks_like_hub_id(name):
        raise RecipeError(
            f"'{name}' is neither an existing directory nor a hub id (org/name)",
            key="model.name_or_path",
            fix="check the path, or train the stage that writes it first",
        )
    return name


def modelscope_download(model_id: str, revision: str | None = None) -> str:
    """Fetch a ModelScope repository into its local cache and return the directory."""
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise RecipeError(
            "model.source is modelscope but the modelscope package is not installed",
            key="model.source",
            fix="pip install 'align-recipes[modelscope]'",
        ) from None
    kwargs = {"revision": revision} if revision else {}
    return snapshot_download(model_id, **kwargs)


def torch_dtype(name: str):
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        name
    ]


def load_tokenizer(path: str, spec: ModelSection, base_dir: Path | None = None):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, path, spec)
    template = spec.chat_template
    if template:
        template_path = (base_dir or Path.cwd()) / template
        tokenizer.chat_template = template_path.read_text() if template_path.is_file() else template
    if tokenizer.pad_token is None:
        # A missing pad token gives NaN losses with some models in fp16; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using eos token %r", tokenizer.eos_token)
    if getattr(tokenizer, "chat_template", None) is None:
        raise RecipeError(
            "the tokenizer has no chat template",
            key="model.chat_template",
            fix="set model.chat_template to a Jinja template (or a .jinja file)",
        )
    return tokenizer


def quantization_config(spec: ModelSection):
    quant = spec.quantized
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = spec.dtype
    # QLoRA's compute dtype follows the model dtype: float16 on T4, bfloat16 on Ampere+, float32 on CPU.
    compute_dtype = torch_dtype("float32" if compute == "auto" else compute)
    # FSDP shards only floating-point tensors: under FSDP the packed 4-bit weights are stored in the compute
    # dtype (PEFT's and TRL's FSDP-QLoRA recipe), so they are split over the ranks like everything else.
    storage = {"bnb_4bit_quant_storage": compute_dtype} if sharding()[0] == "fsdp" else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        **storage,
    )


def load_model(path: str, spec: ModelSection, head: str = "causal_lm", use_cpu: bool = False):
    """The policy (causal LM) or a reward model (sequence classifier with one score)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"dtype": torch_dtype(spec.dtype)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        kwargs["device_map"] = {"": "cpu" if use_cpu else local_rank}
    if head == "reward":
        kwargs["num_labels"] = 1
        model = _from_pretrained(AutoModelForSequenceClassification, path, spec, **kwargs)
    else:
        model = _from_pretrained(AutoModelForCausalLM, path, spec, **kwargs)
    if quant is not None and use_cpu:
        keep_4bit_layout(model)
    return model


def keep_4bit_layout(model) -> int:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights into its CPU inference layout.

    On CPUs with AVX512-BF16, a Linear4bit repacks its weight in place on the first forward that runs in eval mode
    without gradients (an evaluation, a PPO rollout); the next training forward then fails with "a view of a leaf
    Variable that requires grad is being used in an in-place operation". A model that trains must keep the layout
    it was quantized in. Returns how many layers were switched."""
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def match_trainable_dtypes(model, bf16: bool) -> int:
    """Trainable weights in fp32 unless training under bf16 autocast.

    TRL casts every trainable parameter of a quantized model to bf16 (QLoRA's recipe), and PEFT copies a reward
    model's score head (modules_to_save) in the model's dtype. In fp32 compute (the cpu profile) a bf16 score head
    meets fp32 hidden states (dtype mismatch); under fp16 mixed precision (the t4 profile) torch's GradScaler refuses
    fp16 trainable weights. Returns how many tensors were cast."""
    import torch

    if bf16:
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def _refuse_custom_code(path: str, spec: ModelSection) -> None:
    """A local model whose config.json maps to code it ships (auto_map) for a model type transformers does not
    implement needs trust_remote_code; say so before transformers fails with a less helpful message."""
    config_file = Path(path) / "config.json"
    if spec.trust_remote_code or not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") in CONFIG_MAPPING_NAMES:
        return  # transformers implements this model type itself and ignores the shipped code
    files = sorted(
        {
            (v[0] if isinstance(v, (list, tuple)) else str(v)).split(".")[0] + ".py"
            for v in auto_map.values()
            if v
        }
    )
    raise RecipeError(
        f"'{spec.name_or_path}' (model type '{config.get('model_type')}') runs its own model code "
        f"({', '.join(files)}), which is not executed unless you allow it",
        key="model.trust_remote_code",
        fix="read that code; if you trust it, set model.trust_remote_code: true",
    )


def _from_pretrained(cls, path: str, spec: ModelSection, **kwargs):
    _refuse_custom_code(path, spec)
    try:
        return cls.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise RecipeError(
                f"'{spec.name_or_path}' ships its own model code",
                key="model.trust_remote_code",
                fix="set model.trust_remote_code: true if you trust that repository",
            ) from None
        raise
    except OSError as exc:
        raise RecipeError(
            f"cannot load '{spec.name_or_path}': {str(exc).splitlines()[0][:200]}",
            key="model.name_or_path",
            fix="check the id or path; offline machines need a local directory",
        ) from None


def peft_config(spec: ModelSection, head: str = "causal_lm"):
    if spec.adapter == "full":
        return None
    from peft import LoraConfig

    lora = spec.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save or (["score"] if head == "reward" else None),
        task_type="SEQ_CLS" if head == "reward" else "CAUSAL_LM",
    )
