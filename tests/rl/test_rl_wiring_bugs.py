"""Tests that catch wiring bugs between the rollout, the advantages, the losses and SPO's tracker (issue 22).

Each follows real rollouts through the trainer and compares what it did (the gradient every micro step added to
the policy and the critic, the tracker's beliefs, the completion mask) with a naive computation from the models
alone: one unpadded sequence at a time, every loss written out below, no trainer code. Completions are scripted,
so each prompt's answer and score are known by hand. Bugs planted by hand that these tests caught are listed in
each test's docstring; the bf16 side (pi_old from generate under autocast) is tests/rl/test_rl_bf16.py.

The gradients are compared to 1e-4 of their norm; padded batches and unpadded sequences agree to about 1e-7 here,
and every planted bug moved some micro step's gradient by 2% or more.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from rl_helpers import (  # noqa: E402
    ScriptedEngine,
    answer_over_ten,
    chat_prompt_ids,
    dataset,
    make_trainer,
    naive_token_logprobs,
)
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402

from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.generation import Generation, Generator, VLLMGenerator, pad_right  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402

MAX_NEW = 4
PROMPTS = dataset(n=4)


# ------------------------------------------------------------------------------------------- helpers


# The layout the hand-computed gradient tests replay: two optimizer steps, each two passes (PPO epochs) over two
# micro-batches of two rollouts.
TWO_STEPS_TWO_PASSES = dict(
    save_strategy="no",
    max_steps=2,
    num_ppo_epochs=2,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    train_dataset=PROMPTS,
)


def scripts_for(tok) -> list[list[int]]:
    """Prompt i's completion: rows 0 and 2 are digits (preferred), rows 1 and 3 letters; rows 0 and 2 end with EOS,
    rows 1 and 3 run to the 4-token cap (the two ways a transformers row stops)."""
    ids = tok.convert_tokens_to_ids
    return [
        ids(list("12")) + [tok.eos_token_id],
        ids(list("abcd")),
        ids(list("7")) + [tok.eos_token_id],
        ids(list("wxyz")),
    ]


def plus_or_minus_one(prompts, completions, **kwargs):
    """+1 for an all-digit answer, -1 otherwise."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if t and t.isdigit() else -1.0 for t in texts]


def digit_share(prompts, completions, **kwargs):
    """Share of digits in the answer: different scores per prompt, known by hand."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


class FixedGenerator(Generator):
    """A stand-in for the transformers path: each prompt gets its scripted completion, and the log-probs reported
    are the live policy's own at sampling time (a naive forward), as `HFGenerator` reports them."""

    logprobs_match_policy = True

    def __init__(self, trainer, scripts: list[list[int]]):
        self.trainer = trainer
        self.scripts = {tuple(trainer._train_prompts.ids(i)): s for i, s in enumerate(scripts)}

    def generate(self, prompt_ids, prompt_mask) -> Generation:
        t = self.trainer
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
        rows = [self.scripts[tuple(p)] for p in prompts]
        logprobs = [naive_token_logprobs(t.model, p, r, t.args.temperature) for p, r in zip(prompts, rows)]
        device = prompt_ids.device
        return Generation(
            pad_right(rows, t.processing_class.pad_token_id, torch.long, device),
            torch.tensor([len(r) for r in rows], device=device),
            torch.tensor([r[-1] not in t.eos_token_ids for r in rows], device=device),
            pad_right(logprobs, 0.0, torch.float32, device),
            None,
        )


def perturbed(model, scale: float, seed: int):
    """A copy of ``model`` with Gaussian noise on every weight (a sampler or reference that is not the policy)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other.eval().requires_grad_(False)


def grads_of(model) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad
    }


class MicroSteps:
    """Records every micro step of the updates: the global step, the dataset rows (prompt keys) it trained on, its
    loss scale, copies of the policy and the critic as they were when it began, and the gradient it added."""

    def __init__(self, trainer):
        self.records = []
        step = trainer._micro_step

        def spy(module, batch, idx, scale):
            models = {"policy": trainer.model, "critic": trainer.value_model}
            models = {k: m for k, m in models.items() if m is not None}
            before = {k: grads_of(m) for k, m in models.items()}
            copies = {k: copy.deepcopy(m) for k, m in models.items()}
            for m in copies.values():
                m.zero_grad(set_to_none=True)
            stats = step(module, batch, idx, scale)
            added = {k: {n: g - before[k][n] for n, g in grads_of(m).items()} for k, m in models.items()}
            keys = [batch["prompt_keys"][i] for i in idx.tolist()]
            self.records.append(
                SimpleNamespace(
                    step=trainer.state.global_step, keys=keys, scale=scale, models=copies, grads=added
                )
            )
            return stats

        trainer._micro_step = spy

    def first_of_each_step(self) -> dict[int, SimpleNamespace]:
        """The first micro step of each global step: its copies are the models the rollout used."""
        firsts = {}
        for r in self.records:
            firsts.setdefault(r.step, r)
        return firsts


def token_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log p(completion[t] | prompt, completion[:t]) at ``temperature``, with gradient, one unpadded sequence."""
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float() / temperature
    positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion))
    return logits[positions].log_softmax(-1)[torch.arange(len(completion)), torch.tensor(completion)]


def token_values(critic, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The critic's value of the state before each completion token, one unpadded sequence."""
    values = critic(input_ids=torch.tensor([prompt + completion]))[0]
    return values[len(prompt) - 1 : len(prompt) - 1 + len(completion)].float()


def assert_same_gradient(got: dict, expected: dict, what: str) -> None:
    g = torch.cat([got[n].flatten() for n in expected])
    e = torch.cat([expected[n].flatten() for n in expected])
    assert e.norm() > 1e-6, f"{what}: the hand gradient is zero, the check would be vacuous"
    # Padded batches against unpadded sequences agree to about 1e-7 of the norm here.
    assert (g - e).norm() <= 1e-4 * e.norm(), (
        f"{what}: |trainer - hand| = {(g - e).norm():.3g}, |hand| = {e.norm():.3g}"
    )


def naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    advantages, running, next_value = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t], next_value = running, values[t]
    return advantages


def naive_whiten(rows: list[list[float]]) -> list[list[float]]:
    """Over every token of every row of the batch together (unbiased variance, eps 1e-8)."""
    flat = torch.tensor([x for row in rows for x in row], dtype=torch.float64)
    mean, var = flat.mean(), flat.var(unbiased=True)
    return [[float((x - mean) / torch.sqrt(var + 1e-8)) for x in row] for row in rows]


# ------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("algorithm", ["ppo", "spo_per_prompt", "spo_global"])
def test_one_update_raises_the_preferred_completion_and_lowers_the_other(tiny, tmp_path, algorithm):
    """The sign of the advantages, end to end: rows 0 and 2 score +1, rows 1 and 3 score -1; after one update (one
    pass, plain policy gradient) the preferred completions' log-probs rise and the others' fall.
    Planted and caught: PPO's advantages negated after GAE; SPO's `scores - baselines` turned around (per-prompt
    tracker)."""
    cls, cfg = (PPOTrainer, PPOConfig) if algorithm == "ppo" else (SPOTrainer, SPOConfig)
    extra = {} if algorithm == "ppo" else {"baseline": algorithm.removeprefix("spo_")}
    t = make_trainer(
        cls,
        cfg,
        tiny,
        tmp_path,
        save_strategy="no",
        max_steps=1,
        num_ppo_epochs=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        train_dataset=PROMPTS,
        reward_funcs=[plus_or_minus_one],
        optim="sgd",  # a step along the gradient itself (Adam's first step is its sign, per weight)
        learning_rate=1.0,
        max_grad_norm=0.0,
        **extra,
    )
    tok, temp = t.processing_class, t.args.temperature
    scripts = scripts_for(tok)
    t.generator = FixedGenerator(t, scripts)
    prompts = [chat_prompt_ids(tok, row["prompt"]) for row in PROMPTS]

    def sequence_logprobs():
        return [sum(naive_token_logprobs(t.model, p, s, temp)) for p, s in zip(prompts, scripts)]

    before = sequence_logprobs()
    t.train()
    after = sequence_logprobs()
    moved = [a - b for a, b in zip(after, before)]
    assert moved[0] > 1e-3 and moved[2] > 1e-3, moved
    assert moved[1] < -1e-3 and moved[3] < -1e-3, moved


def test_ppo_gradients_match_the_losses_by_hand_over_two_steps_of_two_passes(tiny, tmp_path):
    """Every micro step of 2 steps x 2 passes adds the gradient of PPO's losses written out by hand: GAE over
    KL-shaped rewards (the score on the last token, -kl_coef * (log pi_old - log pi_ref) on every token; the KL is
    non-zero at step 2, after a real update), advantages whitened over every token of the rollout, pi_old from the
    rollout (not refreshed between passes), the truncated importance weights of a sampler that is not the policy,
    and the clipped value loss, whose clip bites in the second pass.
    Planted and caught: PPO's advantages negated; the KL left out of the shaped reward (kl_coef 0 there);
    advantages whitened per row; pi_old refreshed every pass (ratio always 1); the value loss's clipped branch
    detached from the critic; its max turned into a min; the importance weights computed but not passed to the
    policy loss."""
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        tiny,
        tmp_path,
        **TWO_STEPS_TWO_PASSES,
        reward_funcs=[plus_or_minus_one],
        learning_rate=1e-2,
        max_new_tokens=MAX_NEW,
        kl_coef=0.2,
        cliprange=0.1,
        cliprange_value=0.05,
        vllm_importance_sampling_cap=1.02,
    )
    args, tok, temp = t.args, t.processing_class, t.args.temperature
    scripts = scripts_for(tok)
    prompts = [chat_prompt_ids(tok, row["prompt"]) for row in PROMPTS]
    sampler = perturbed(t.model, 0.05, seed=1)
    engine = ScriptedEngine(sampler, {tuple(p): s for p, s in zip(prompts, scripts)}, temp)
    t.generator = VLLMGenerator(engine, tok.pad_token_id, t.eos_token_ids, MAX_NEW)
    spy = MicroSteps(t)
    t.train()
    assert [(r.step, len(r.keys)) for r in spy.records] == [(0, 2)] * 4 + [(1, 2)] * 4

    # What the rollout of each step saw, by hand: pi_old, values, reference, sampler, shaped rewards, GAE, whitening.
    rollouts, seen = {}, {"kl": 0.0, "tis": 0.0, "ratio_clipped": 0, "ratio_free": 0, "value_clipped": 0}
    for step, first in spy.first_of_each_step().items():
        rows = {}
        with torch.no_grad():
            for k in range(4):
                p, s = prompts[k], scripts[k]
                old = token_logprobs(first.models["policy"], p, s, temp)
                ref = token_logprobs(t.ref_model, p, s, temp)
                sampled = token_logprobs(sampler, p, s, temp)
                values = token_values(first.models["critic"], p, s)
                score = 1.0 if k in (0, 2) else -1.0
                rewards = (-args.kl_coef * (old - ref)).tolist()
                rewards[-1] += score
                gae = naive_gae(rewards, values.tolist(), args.gamma, args.lam)
                weights = torch.exp(old - sampled).clamp(max=args.vllm_importance_sampling_cap)
                rows[k] = dict(prompt=p, completion=s, old=old, values=values, gae=gae, weights=weights)
                if step == 1:
                    seen["kl"] = max(seen["kl"], (old - ref).abs().max().item())
                seen["tis"] = max(seen["tis"], (weights - 1).abs().max().item())
        whitened = naive_whiten([rows[k]["gae"] for k in range(4)])
        for k in range(4):
            rows[k]["advantages"] = torch.tensor(whitened[k])
            rows[k]["returns"] = torch.tensor(rows[k]["gae"]) + rows[k]["values"]
        rollouts[step] = rows

    for n, record in enumerate(spy.records):
        rows = [rollouts[record.step][k] for k in record.keys]
        count = sum(len(r["completion"]) for r in rows)
        policy, critic = record.models["policy"], record.models["critic"]
        policy_loss, value_loss = 0.0, 0.0
        for r in rows:
            ratio = torch.exp(token_logprobs(policy, r["prompt"], r["completion"], temp) - r["old"])
            a = r["advantages"]
            clipped = ratio.clamp(1 - args.cliprange, 1 + args.cliprange)
            policy_loss = policy_loss + (torch.maximum(-a * ratio, -a * clipped) * r["weights"]).sum()
            v = token_values(critic, r["prompt"], r["completion"])
            v_clipped = torch.clamp(v, r["values"] - args.cliprange_value, r["values"] + args.cliprange_value)
            ret = r["returns"]
            value_loss = value_loss + torch.maximum((v - ret) ** 2, (v_clipped - ret) ** 2).sum()
            if n % 4 >= 2:  # the second pass of its step: ratios and values have moved
                bites = (ratio.detach() - 1).abs() > args.cliprange
                seen["ratio_clipped"] += int(bites.sum())
                seen["ratio_free"] += int((~bites & ((ratio.detach() - 1).abs() > 1e-3)).sum())
                moved = (v.detach() - r["values"]).abs() > args.cliprange_value
                seen["value_clipped"] += int((moved & ((v_clipped - ret) ** 2 > (v - ret) ** 2)).sum())
        (policy_loss / count * record.scale).backward()
        (args.vf_coef * 0.5 * value_loss / count * record.scale).backward()
        where = f"step {record.step + 1}, micro step {n % 4 + 1}"
        assert_same_gradient(record.grads["policy"], grads_of(policy), f"policy, {where}")
        assert_same_gradient(record.grads["critic"], grads_of(critic), f"critic, {where}")

    # Not vacuous: each wiring the gradients check was exercised.
    assert seen["kl"] > 1e-3, seen  # the KL term is present at step 2
    assert seen["tis"] > 1e-3, seen  # the importance weights differ from 1
    assert seen["ratio_clipped"] > 0 and seen["ratio_free"] > 0, (
        seen
    )  # pass 2: ratios away from 1, some clipped
    assert seen["value_clipped"] > 0, seen  # pass 2: the value clip's branch wins somewhere


def test_spo_gradients_match_the_loss_with_beta_k3_by_hand(tiny, tmp_path):
    """SPO's loss by hand on the transformers path, every micro step of 2 steps x 2 passes: the clipped surrogate
    with the per-prompt advantages (score - the prompt's baseline, normalised over the batch; the prior's baseline
    at step 1, each prompt's updated belief at step 2) plus beta * mean k3 to a reference that is not the policy,
    k3 = exp(log pi_ref - log pi) - 1 - (log pi_ref - log pi).
    Planted and caught: the KL term left out of the loss; the KL term computed on detached log-probs (right value,
    no gradient); `baselines - scores` instead of `scores - baselines`; pi_old refreshed every pass."""
    beta = 0.5
    policy = AutoModelForCausalLM.from_pretrained(tiny)
    t = make_trainer(
        SPOTrainer,
        SPOConfig,
        tiny,
        tmp_path,
        **TWO_STEPS_TWO_PASSES,
        reward_funcs=[digit_share],
        ref_model=perturbed(policy, 0.05, seed=2),
        learning_rate=1e-2,
        beta=beta,
        cliprange=0.1,
        reward_scale=1.0,  # the tracker's map from rewards to [0, 1]: (r + 1) / 2
    )
    args, tok, temp = t.args, t.processing_class, t.args.temperature
    scripts = scripts_for(tok)
    prompts = [chat_prompt_ids(tok, row["prompt"]) for row in PROMPTS]
    t.generator = FixedGenerator(t, scripts)
    spy = MicroSteps(t)
    t.train()

    scores = torch.tensor(
        [sum(c.isdigit() for c in tok.decode(s, skip_special_tokens=True)) for s in scripts]
    )
    scores = scores / torch.tensor([len(tok.decode(s, skip_special_tokens=True)) for s in scripts])
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]

    def normalised(raw: torch.Tensor) -> torch.Tensor:
        return ((raw - raw.mean()) / (raw.std(unbiased=False) + 1e-8)).clamp(
            -args.advantage_clip, args.advantage_clip
        )

    scale = args.reward_scale
    unit = ((scores + scale) / (2 * scale)).clamp(0, 1)  # the tracker's [0, 1] rewards
    prior = torch.full((4,), 0.5)
    # step 1 visits every prompt first: the tracker forgets its prior at rho = clip_upper (the SPO paper's 0.96)
    alpha, beta_ = args.clip_upper * prior + unit, args.clip_upper * prior + (1 - unit)
    baselines = {0: torch.zeros(4), 1: alpha / (alpha + beta_) * 2 * scale - scale}
    advantages = {step: normalised(scores - baselines[step]) for step in (0, 1)}
    old = {
        step: [
            token_logprobs(first.models["policy"], prompts[k], scripts[k], temp).detach() for k in range(4)
        ]
        for step, first in spy.first_of_each_step().items()
    }
    with torch.no_grad():
        ref = [token_logprobs(t.ref_model, prompts[k], scripts[k], temp) for k in range(4)]
    assert (
        max((r - o).abs().max().item() for r, o in zip(ref, old[0])) > 1e-3
    )  # the reference is not the policy

    for n, record in enumerate(spy.records):
        count = sum(len(scripts[k]) for k in record.keys)
        model = record.models["policy"]
        loss = 0.0
        for k in record.keys:
            now = token_logprobs(model, prompts[k], scripts[k], temp)
            ratio = torch.exp(now - old[record.step][k])
            a = advantages[record.step][k]
            clipped = ratio.clamp(1 - args.cliprange, 1 + args.cliprange)
            log_ratio = ref[k] - now
            k3 = torch.exp(log_ratio) - 1 - log_ratio
            loss = loss + torch.maximum(-a * ratio, -a * clipped).sum() + beta * k3.sum()
        (loss / count * record.scale).backward()
        assert_same_gradient(
            record.grads["policy"], grads_of(model), f"step {record.step + 1}, micro {n % 4 + 1}"
        )


class BeforeStep(TrainerCallback):
    """Copies of the policy and of the SPO tracker's state as each step begins."""

    def __init__(self):
        self.trainer, self.seen = None, {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.seen[state.global_step] = (copy.deepcopy(model), copy.deepcopy(self.trainer.tracker))


def test_spo_tracker_forgets_by_the_divergence_of_a_moving_policy(tiny, tmp_path):
    """Step 2 revisits every prompt after a real update: each prompt's belief must decay by
    rho = clip(2^(-D / half_life)), D the mean |log pi_now - log pi_then| over the tokens of its stored sample, by
    hand (naive forward of the policy as step 2 began), before its new reward is added. The stored samples are the
    completions of step 1 and the log-probs of the policy that sampled them.
    Planted and caught: D computed but not passed to the tracker (every update used rho_const)."""
    callback = BeforeStep()
    t = make_trainer(
        SPOTrainer,
        SPOConfig,
        tiny,
        tmp_path,
        save_strategy="no",
        max_steps=2,
        train_dataset=PROMPTS,
        reward_funcs=[answer_over_ten],
        learning_rate=2e-2,
        clip_lower=0.05,
        clip_upper=0.99,
        half_life=0.5,
        reward_scale=1.0,
        callbacks=[callback],
    )
    callback.trainer = t
    tok, args = t.processing_class, t.args
    t.train()
    first_policy, _ = callback.seen[0]
    moved_policy, tracker = callback.seen[1]
    rhos = []
    for key in range(4):
        prompt = chat_prompt_ids(tok, PROMPTS[key]["prompt"])
        ids, then = (list(x) for x in tracker.stored_sample(key))
        assert then == pytest.approx(
            naive_token_logprobs(first_policy, prompt, ids, args.temperature), abs=1e-5
        )
        now = naive_token_logprobs(moved_policy, prompt, ids, args.temperature)
        d = sum(abs(a - b) for a, b in zip(now, then)) / len(ids)
        rho = min(max(2 ** (-d / args.half_life), args.clip_lower), args.clip_upper)
        rhos.append(rho)
        reward = int(PROMPTS[key]["answer"]) / 10
        unit = min(max((reward + args.reward_scale) / (2 * args.reward_scale), 0.0), 1.0)
        (alpha, beta), (alpha_before, beta_before) = t.tracker.belief(key), tracker.belief(key)
        assert alpha == pytest.approx(rho * alpha_before + unit, abs=1e-6)
        assert beta == pytest.approx(rho * beta_before + 1 - unit, abs=1e-6)
    # Not vacuous: every rho is inside its clip range and away from rho_const.
    assert all(args.clip_lower < r < args.clip_upper and abs(r - args.rho_const) > 1e-3 for r in rhos), rhos


class BoostEOS:
    """A forward hook adding ``boost`` to the EOS logit: transformers' generate then ends some rows with EOS
    before the cap. It is part of the model everywhere (generate, training forwards, naive forwards)."""

    def __init__(self, eos: int, boost: float):
        self.eos, self.boost = eos, boost

    def __call__(self, module, inputs, output):
        bias = torch.zeros(output.logits.shape[-1], dtype=output.logits.dtype)
        bias[self.eos] = self.boost
        output.logits = output.logits + bias
        return output


def test_eos_rows_on_the_transformers_path_keep_their_eos_token(tiny, tmp_path):
    """A row that stops at EOS generated that token: it is in the mask, its log-prob is the policy's (naive
    forward) and it enters the loss. Rows cut at the cap have no EOS and are full length.
    Planted and caught: the transformers generator's lengths stopping before the EOS token."""
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        tiny,
        tmp_path,
        save_strategy="no",
        max_new_tokens=6,
        temperature=1.0,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
    )
    tok = t.processing_class
    eos = tok.eos_token_id
    t.model.register_forward_hook(BoostEOS(eos, 5.0))
    keys, rows = list(range(8)), dataset()
    batch = t._rollout(keys)
    ended = 0
    for i, key in enumerate(keys):
        n = int(batch["response_mask"][i].sum())
        ids = batch["response_ids"][i].tolist()
        first_eos = ids.index(eos) if eos in ids else None
        if batch["truncated"][i]:
            assert first_eos is None and n == 6, (ids, n)
            continue
        assert first_eos is not None and n == first_eos + 1, (ids, n)  # EOS generated and inside the mask
        ended += first_eos < 5
        naive = naive_token_logprobs(
            t.model, chat_prompt_ids(tok, rows[key]["prompt"]), ids[:n], t.args.temperature
        )
        assert batch["logprobs"][i, :n].tolist() == pytest.approx(naive, abs=1e-5)
        assert batch["logprobs"][i, n - 1] < -1e-3  # EOS was likely, not certain: its log-prob is in the loss
    assert ended >= 2, batch["response_ids"]  # not vacuous: rows ended with EOS before the cap
