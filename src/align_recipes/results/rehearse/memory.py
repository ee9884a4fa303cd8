"""An estimate of the full model's peak GPU memory per process under a profile, against its budget.

`compat.memory_estimate` answers "can the weights fit at all" from a name-derived size. A rehearsal knows
the real architecture, so this estimate adds what a training step holds at its peak:
  weights       quantized linears at ~0.52 B/param (NF4 + double-quantized absmax), the rest (embeddings,
                norms, an untied head) in the model dtype; a frozen reference copy for full fine-tuning
                with a KL term (ours, PPO/SPO: in the compute dtype); PPO's critic (a body of its own under
                full fine-tuning or from a reward/value model; under LoRA from the policy, a second adapter
                on the policy's base) and the reward model when there is one
  gradients     the trainable parameters in fp32 (adapters), or at the master-weight dtype (full)
  optimizer     AdamW: two fp32 moments per trainable parameter (8 B); 8-bit/paged optimizers 2 B
  activations   per decoder layer and token: saved inputs of norms, projections, attention and the MLP,
                ((10 hidden + 2 kv + 4 intermediate) values, more with LoRA dropout); only the layer
                inputs with gradient checkpointing, plus one layer recomputed. The logits: micro-batch x
                length x vocabulary, in the compute dtype and upcast to fp32 for the loss with its gradient
                (10 B per value). Preference pairs double the sequences. Ours (PPO/SPO) takes log-probs of
                the sampled tokens only, chunked: the response logits and their gradient in the compute
                dtype, a few float32 chunks ("log-prob chunks") and the rollout's per-token tensors
                ("rollout buffers"); `rl_terms`.
  overhead      CUDA context, kernels and allocator slack (~1 GB)
It is an estimate (±30 %): no GPU has checked it yet (docs/benchmarks.md records measured peaks when one has).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align_recipes.plan.sections import LoraSection, ModelSection
from align_recipes.registry import UNPAIRED

GB = 1e9
OVERHEAD_GB = 1.0
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
NF4_BYTES = 0.516  # 4 bits + fp8 absmax per 64 + fp32 per 256 blocks (double quantization)
LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TIGHT = 0.9  # above this share of the budget: "tight"


@dataclass
class Estimate:
    parts: dict[str, float]  # GB per part
    notes: list[str] = field(default_factory=list)
    budget_gb: float | None = None  # the profile's GPU memory (None: CPU profile)
    profile: str = ""

    @property
    def total_gb(self) -> float:
        return sum(self.parts.values())

    @property
    def verdict(self) -> str:
        if self.budget_gb is None:
            return "no GPU budget (CPU profile)"
        if self.total_gb > self.budget_gb:
            return "WILL NOT FIT"
        return "tight" if self.total_gb > TIGHT * self.budget_gb else "fits"

    @property
    def fits(self) -> bool:
        return self.budget_gb is None or self.total_gb <= self.budget_gb

    def line(self) -> str:
        budget = f" of {self.budget_gb:.0f} GB" if self.budget_gb else ""
        return f"{self.total_gb:.1f}{budget}: {self.verdict}"

    def breakdown(self) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items())


def _shape(config: dict) -> dict:
    c = config.get("text_config") or config
    hidden = int(c["hidden_size"])
    heads = int(c.get("num_attention_heads") or max(1, hidden // 64))
    head_dim = int(c.get("head_dim") or hidden // heads)
    return {
        "hidden": hidden,
        "layers": int(c["num_hidden_layers"]),
        "vocab": int(c["vocab_size"]),
        "inter": int(c.get("intermediate_size") or 4 * hidden),
        "heads": heads,
        "head_dim": head_dim,
        "kv": int(c.get("num_key_value_heads") or heads) * head_dim,
        "tied": bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
    }


def lora_parameters(config: dict, lora: LoraSection) -> int:
    """Trainable LoRA parameters: r x (in + out) for each targeted projection of every layer."""
    s = _shape(config)
    h, kv, i = s["hidden"], s["kv"], s["inter"]
    sizes = {
        "q_proj": (h, s["heads"] * s["head_dim"]),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (s["heads"] * s["head_dim"], h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    targets = lora.target_modules
    names = LORA_TARGETS_ALL if targets in ("all-linear", None) else [t for t in targets if t in sizes]
    r = int(lora.r)
    return s["layers"] * sum(r * sum(sizes[n]) for n in names)


def _tokens(algorithm, train: dict) -> tuple[int, int, str]:
    """(sequences per micro-batch, tokens per sequence, how) for the training forward."""
    micro = int(train.get("per_device_train_batch_size") or 8)
    if algorithm.generates:
        prompt = int(train.get("max_prompt_length") or 512)
        completion = int(train.get("max_completion_length") or train.get("max_new_tokens") or 256)
        return (
            micro,
            prompt + completion,
            f"micro-batch {micro} x (prompt {prompt} + completion {completion})",
        )
    length = int(train.get("max_length") or 1024)
    pairs = 2 if algorithm.data_kind == "preference" else 1
    how = f"micro-batch {micro}{' x 2 (chosen + rejected)' if pairs == 2 else ''} x {length} tokens"
    if algorithm.data_kind == UNPAIRED:  # KTO: a mismatched-pairs batch estimates the KL term
        how += " (+ a KL batch)"
        pairs = 2
    return micro * pairs, length, how


def estimate(
    config: dict, params: int, linear_params: int, algorithm, model: ModelSection, train: dict, profile
) -> Estimate:
    """Peak GPU memory of one training process for the full model (`config`, `params` in all, of which
    `linear_params` in the decoder layers' projections) with the plan's resolved `model` and `train` values."""
    s = _shape(config)
    adapter, quant, dtype = model.adapter, model.quantized, model.dtype
    compute = 2.0 if (train.get("fp16") or train.get("bf16")) else DTYPE_BYTES.get(dtype, 2.0)
    weight_bytes = DTYPE_BYTES.get(dtype, 2.0)
    notes: list[str] = []

    other = params - linear_params
    if quant == "4bit":
        weights = linear_params * NF4_BYTES + other * weight_bytes
        notes.append(f"4-bit linears, {dtype} embeddings")
    elif quant == "8bit":
        weights = linear_params * 1.06 + other * weight_bytes
    else:
        weights = params * weight_bytes
    base_weights = weights

    if adapter == "full":
        trainable = params
    else:
        trainable = lora_parameters(config, model.lora)
        if algorithm.model_head == "reward":
            trainable += s["hidden"]  # the score head (modules_to_save)
    optim = str(train.get("optim") or "adamw_torch")
    optimizer_bytes = 2.0 if ("8bit" in optim or "bnb" in optim) else 8.0
    grad_bytes = 4.0 if adapter != "full" else weight_bytes
    gradients = trainable * grad_bytes
    optimizer = trainable * optimizer_bytes
    if adapter != "full":
        weights += trainable * 4.0  # the fp32 adapter weights themselves

    ours = algorithm.trainer.startswith("align_recipes.rl.")  # PPO/SPO: rl_terms below
    reference = 0.0
    needs_reference = algorithm.has_reference(train)
    if needs_reference and adapter == "full":
        # Ours keeps the frozen copy in the compute dtype (rl.modeling.frozen_in_compute_dtype).
        reference = params * compute if ours else base_weights
        notes.append("a frozen reference copy" + (" in the compute dtype" if ours else ""))
    elif needs_reference:
        notes.append("reference = the policy with its adapter off (no copy)")
    critic = 0.0
    if algorithm.critic:
        critic = _critic_weights(params, base_weights, weight_bytes, adapter, trainable, train, notes)
        gradients, optimizer = gradients * 2, optimizer * 2

    sequences, length, how = _tokens(algorithm, train)
    tokens = sequences * length
    per_token_layer = 10 * s["hidden"] + 2 * s["kv"] + 4 * s["inter"]
    if adapter != "full":
        per_token_layer += 4 * s["hidden"] + s["inter"]  # dropout masks/copies before each LoRA projection
    if train.get("activation_checkpointing") or train.get("gradient_checkpointing"):
        layers_act = tokens * (s["layers"] * s["hidden"] + per_token_layer) * compute
        how += ", activation checkpointing"
    else:
        layers_act = tokens * s["layers"] * per_token_layer * compute
    head = 1 if algorithm.model_head == "reward" else s["vocab"]
    logits = tokens * head * (compute + 8.0)
    rl = {}
    if ours:
        logits, rl = rl_terms(s["vocab"], compute, train)
    if algorithm.critic:
        layers_act *= 2  # the critic's forward and backward too
    notes.append(how)

    parts = {
        "weights": (weights + reference + critic) / GB,
        "gradients": gradients / GB,
        "optimizer": optimizer / GB,
        "activations": layers_act / GB,
        "logits": logits / GB,
        **{k: v / GB for k, v in rl.items()},
        "overhead": OVERHEAD_GB,
    }
    gpu = getattr(profile, "gpu", None)
    return Estimate(
        parts=parts,
        notes=notes,
        budget_gb=gpu.memory_gb if gpu else None,
        profile=getattr(profile, "name", ""),
    )


def _critic_weights(
    params: int, base_weights: float, weight_bytes: float, adapter: str, trainable: int, train: dict, notes
) -> float:
    """PPO's critic and reward model, in bytes. The critic has a body of its own when it starts from the reward
    model or value_model_path, or under full fine-tuning; under LoRA, started from the policy, it is a second
    adapter on the policy's base (rl.shared_critic): only the adapter's float32 weights."""
    reward_model = params * weight_bytes if train.get("reward_model_path") else 0.0
    own_body = adapter == "full" or bool(train.get("reward_model_path") or train.get("value_model_path"))
    critic = base_weights if own_body else 0.0
    if adapter != "full":
        critic += trainable * 4.0
    notes.append(
        ("a critic" if own_body else "a critic adapter on the policy's base")
        + (" and a reward model" if reward_model else "")
    )
    return critic + reward_model


def rl_terms(vocab: int, compute: float, train: dict) -> tuple[float, dict[str, float]]:
    """Our PPO/SPO (bytes): (logits, other terms). The losses take log-probs of the sampled tokens only, chunked
    (rl.logprobs): the response logits of one micro-batch and their gradient, both in the compute dtype, plus a
    few float32 chunks; the rollout buffers hold ids and masks (int64) and about eleven float32 values per
    response token (log-probs, reference log-probs, entropy, values, returns, advantages, rewards, ...)."""
    from align_recipes.rl.logprobs import WORKING_CHUNKS, chunk_positions

    micro = int(train.get("per_device_train_batch_size") or 8)
    rollout = (
        micro * int(train.get("gradient_accumulation_steps") or 1) * int(train.get("num_mini_batches") or 1)
    )
    prompt = int(train.get("max_prompt_length") or 512)
    completion = int(train.get("max_completion_length") or train.get("max_new_tokens") or 256)
    logits = micro * completion * vocab * 2 * compute
    chunks = WORKING_CHUNKS * min(chunk_positions(vocab), micro * completion) * vocab * 4.0
    buffers = rollout * ((prompt + completion) * 3 * 8.0 + completion * 11 * 4.0)
    return logits, {"log-prob chunks": chunks, "rollout buffers": buffers}
