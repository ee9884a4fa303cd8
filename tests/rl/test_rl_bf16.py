"""bf16 that holds: under CPU bf16 autocast a policy that does not move (learning rate 0) must look unmoved to
the ratio and to SPO's tracker, the critic's head must compute in float32, and a batch of equal rewards must not
be whitened into noise. Old behaviour caught (issue 22): pi_old and SPO's stored log-probs came from `generate`'s
incremental key/value-cache scores, 0.01 per token away from the training forward, so first ratios spread over
0.62-1.35 and rho sat at clip_lower for a frozen policy; the value head ran in bf16; equal rewards whitened to
unit-variance noise."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from rl_helpers import answer_over_ten, build_tiny, dataset, make_trainer, step_logs  # noqa: E402
from transformers import AutoModel  # noqa: E402

from align_recipes.rl import core  # noqa: E402
from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402
from align_recipes.rl.value import ValueHead  # noqa: E402

BF16_CPU = dict(bf16=True, use_cpu=True, save_strategy="no")


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """The tiny model with weights of std 0.2 instead of 0.02: logits of a trained model's size, where bf16's
    rounding shows (with the default init every logit is near 0 and generate's scores agree to 2e-5)."""
    return build_tiny(tmp_path_factory.mktemp("sharp32"), initializer_range=0.2)


def first_pass_ratios(trainer) -> list[torch.Tensor]:
    """Wraps the trainer's loss: every micro batch's ratios pi / pi_old on its generated tokens."""
    ratios, loss = [], trainer._loss

    def spy(batch, idx, logprobs):
        mask = batch["response_mask"][idx].bool()
        ratios.append(torch.exp(logprobs.detach() - batch["logprobs"][idx])[mask])
        return loss(batch, idx, logprobs)

    trainer._loss = spy
    return ratios


def test_frozen_policy_has_first_ratios_of_one_under_bf16_autocast(sharp, tmp_path):
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        sharp,
        tmp_path,
        learning_rate=0.0,
        max_steps=1,
        num_ppo_epochs=1,
        max_new_tokens=8,
        temperature=1.0,
        **BF16_CPU,
    )
    assert t.accelerator.mixed_precision == "bf16"
    ratios = first_pass_ratios(t)
    t.train()
    every = torch.cat(ratios)
    assert every.numel() >= 8
    assert (every - 1).abs().max().item() < 1e-3, every


def test_frozen_policy_keeps_spo_rho_at_clip_upper_under_bf16_autocast(sharp, tmp_path):
    """Every prompt comes back at step 2 (4 prompts, rollout of 4); the policy has not moved, so D is rounding and
    rho must be clip_upper (0.96) for all of them."""
    t = make_trainer(
        SPOTrainer,
        SPOConfig,
        sharp,
        tmp_path,
        learning_rate=0.0,
        max_steps=2,
        train_dataset=dataset(n=4),
        reward_funcs=[answer_over_ten],
        max_new_tokens=8,
        temperature=1.0,
        **BF16_CPU,
    )
    t.train()
    logs = step_logs(t, 2)
    assert logs["rho"] == pytest.approx(t.args.clip_upper), logs
    assert logs["divergence"] < 1e-3, logs


def test_value_head_computes_in_float32_under_autocast(tiny):
    backbone = AutoModel.from_pretrained(tiny)
    head = torch.nn.Linear(backbone.config.hidden_size, 1)
    torch.manual_seed(0)
    torch.nn.init.normal_(head.weight, std=1.0)
    critic = ValueHead(backbone, backbone.config.hidden_size, head)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = critic(input_ids=ids)
        hidden = backbone(input_ids=ids).last_hidden_state
    expected = hidden.float() @ head.weight.float().T + head.bias.float()
    assert values.dtype == torch.float32
    assert torch.allclose(values, expected.squeeze(-1), atol=1e-5, rtol=1e-5), (values, expected)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.3, 7.25])
def test_whitening_equal_rewards_gives_zero_advantages(value):
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    values = torch.full((3, 4), value) * mask + 5.0 * (1 - mask)  # padding differs, and must not count
    assert torch.equal(core.masked_whiten(values, mask), torch.zeros(3, 4))
    assert torch.equal(core.masked_whiten(values, mask, shift_mean=False), values * mask)  # left as it is
    scores = torch.full((64,), value)
    assert torch.equal(core.spo_advantages(scores, 0.1, clip=5.0, normalize=True), torch.zeros(64))
    # a real spread, however small in reward units, is still normalised
    spread = scores + torch.tensor([1e-2, -1e-2] * 32)
    assert core.spo_advantages(spread, 0.1, clip=5.0, normalize=True).tolist() == pytest.approx(
        [1.0, -1.0] * 32, abs=1e-3
    )
    graded = core.masked_whiten(values + torch.tensor([[1e-2], [0.0], [-1e-2]]) * mask, mask)
    assert graded[0, 0] > 0.9 and graded[2, 0] < -0.9


def test_spo_with_equal_rewards_makes_zero_advantages(tiny, tmp_path):
    """Every completion scores the same and every prompt has the same (prior) baseline: no signal, no update."""

    def constant(prompts, completions, **kwargs):
        return [0.1] * len(completions)  # 8 equal floats: their mean is off by rounding

    t = make_trainer(
        SPOTrainer, SPOConfig, tiny, tmp_path, save_strategy="no", max_steps=1, reward_funcs=[constant]
    )
    batch = t._rollout(list(range(8)))
    t._advantages(batch)
    assert torch.equal(batch["advantages"], torch.zeros_like(batch["advantages"]))
