"""Reward functions for the bad-input cases."""


def no_kwargs(prompts, completions):
    """Cannot receive the dataset columns (no **kwargs)."""
    return [0.0 for _ in completions]


def score(prompts, completions, **kwargs):
    return [0.0 for _ in completions]


def by_reference(prompts, completions, reference, **kwargs):
    """Reads a `reference` column (the prompts file has `answer`)."""
    return [float(str(r) in str(c)) for c, r in zip(completions, reference)]
