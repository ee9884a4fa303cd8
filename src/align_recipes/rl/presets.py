"""Named sets of SPO settings (`train.preset`), as plain data: the plan layer lays them under the recipe's own
`train:` values (which win) without importing torch, and `SPOConfig.from_preset` does the same from Python.

`paper`: the full method of the SPO paper (Xu & Ding 2025, "Single-stream Policy Optimization", arXiv
2509.13232) with its authors' settings (volcengine/verl `recipe/spo/run_spo.sh` and `spo_ray_trainer.py`):
the per-prompt tracker, prioritised prompt sampling, the tracker started from 8 offline samples per prompt
(their offline-value script samples 8 per prompt), the asymmetric clip 0.2 / 0.28 and no KL term (`use_kl_loss`
and `use_kl_in_reward` off). The forgetting factor's D_half 0.06 and clip 0.875 / 0.96 are already our defaults.
"""

from __future__ import annotations

SPO_PRESETS: dict[str, dict] = {
    "paper": {
        "baseline": "per_prompt",
        "prioritized_sampling": True,
        "offline_init_samples": 8,
        "cliprange": 0.2,
        "cliprange_high": 0.28,
        "beta": 0.0,
        "rho_mode": "kl",
        "half_life": 0.06,
        "clip_lower": 0.875,
        "clip_upper": 0.96,
    },
}
