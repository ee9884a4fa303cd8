"""PPO's critic: a transformer backbone with a linear head that predicts one value per token.

A sequence classifier (what reward models are) scores only the last token; PPO needs V(s_t) at every
response position. `ValueHead` keeps the backbone's hidden states and applies ``nn.Linear(hidden, 1)``
to all of them. It starts from (in this order) ``value_model_path``, the reward model, or a copy of the
policy's backbone with a fresh head. Checkpoints store only its trainable tensors
(``value_model.safetensors``); resuming rebuilds it from the same source and loads them on top.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

VALUE_WEIGHTS_NAME = "value_model.safetensors"


def _unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM / sequence classifier (``model.model`` for Qwen, Llama, ...)."""
    model = _unwrap_peft(model)
    return getattr(model, "base_model", model)


class ValueHead(nn.Module):
    """backbone -> last hidden states -> Linear(hidden, 1) -> values [B, T] (float32)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            if head is not None:
                self.head.weight.copy_(head.weight.float())
                self.head.bias.copy_(head.bias.float() if head.bias is not None else torch.zeros(1))
            else:  # a fresh head predicts 0 everywhere: the first advantages are the plain returns
                self.head.weight.zero_()
                self.head.bias.zero_()
        self.head.to(torch.float32)

    @property
    def config(self):
        return getattr(self.backbone, "config", None)

    @property
    def _no_split_modules(self):
        """The backbone's decoder-layer classes: FSDP's auto-wrap makes each such layer a unit of its own."""
        return getattr(_unwrap_peft(self.backbone), "_no_split_modules", None)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        # The head runs in float32 even under autocast (which would run the Linear in bf16/fp16): values are
        # regressed onto returns and compared with the rollout's values by the value clip, and bf16's 8 bits of
        # mantissa are coarser than the differences that clip measures.
        # A new tensor, not a view of the head's output: FSDP2 hooks its backward on the module's output tensor.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).clone()

    def activation_checkpointing_enable(self, **kwargs) -> None:
        base = _unwrap_peft(self.backbone)
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(base, "gradient_checkpointing_enable"):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # --- checkpoints: trainable tensors only
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def save(self, directory: str) -> None:
        from safetensors.torch import save_file

        save_file(
            self.trainable_state_dict(),
            os.path.join(directory, VALUE_WEIGHTS_NAME),
            metadata={"format": "pt"},
        )

    def load(self, directory: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(directory, VALUE_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"checkpoint {directory} has no {VALUE_WEIGHTS_NAME}: it was not written by PPO"
            )
        state = load_file(path)
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{path} does not match this critic (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                "resume with the same model, value_model_path and adapter settings"
            )
        self.load_state_dict(state, strict=False)


def _head_of(model: nn.Module) -> nn.Linear | None:
    head = getattr(_unwrap_peft(model), "score", None)
    if isinstance(head, nn.Linear) and head.out_features == 1:
        return head
    return None


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's floating-point weights (for a 4-bit model: its unquantized parts)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def value_model_from(source, policy: nn.Module, peft_config=None, **load_kwargs) -> ValueHead:
    """Build the critic from a path (a reward model or any model with a sequence-classification class),
    a loaded model, an existing `ValueHead`, or (``source=None``) a copy of the policy's backbone."""
    if isinstance(source, ValueHead):
        return source
    if source is None:
        model = copy.deepcopy(backbone_of(policy))
        head = None
    else:
        if isinstance(source, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification

            # Unquantized, in the dtype the policy computes in (a 4-bit policy's float parts): a reward model saved
            # in another dtype would otherwise train in it (bf16 weights under fp16 autocast cannot be unscaled).
            load_kwargs.setdefault("dtype", _float_dtype(policy))
            source = AutoModelForSequenceClassification.from_pretrained(
                str(source), num_labels=1, **load_kwargs
            )
        head = _head_of(source)
        model = backbone_of(source)
    policy_vocab = getattr(getattr(_unwrap_peft(policy), "config", None), "vocab_size", None)
    critic_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if policy_vocab is not None and critic_vocab is not None and policy_vocab != critic_vocab:
        raise ValueError(
            f"the critic's vocabulary ({critic_vocab} tokens) differs from the policy's ({policy_vocab}): "
            "it reads the policy's token ids, so set value_model_path to a model with the same tokenizer"
        )
    quantized = any(
        getattr(p, "quant_state", None) is not None or p.dtype in (torch.uint8, torch.int8)
        for p in model.parameters()
    )
    if peft_config is None:
        if quantized:
            raise ValueError(
                "the critic's backbone is quantized (4/8-bit) and cannot be trained in full: give the "
                "trainer a peft_config (QLoRA), or set value_model_path to an unquantized model"
            )
        model.requires_grad_(True)
    else:
        # Only the critic's own adapter trains; quantized base weights cannot require gradients at all.
        model.requires_grad_(False)
        from peft import get_peft_model

        critic_config = copy.deepcopy(peft_config)
        critic_config.task_type = None
        critic_config.modules_to_save = None
        model = get_peft_model(model, critic_config)
    hidden = model.config.hidden_size if hasattr(model, "config") else _unwrap_peft(model).config.hidden_size
    return ValueHead(model, hidden, head)
