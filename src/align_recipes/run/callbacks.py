"""The Trainer's callbacks, as thin adapters over plain objects that hold the logic.

`transformers.TrainerCallback` cannot be subclassed without importing transformers, and that imports torch
(seconds). The run's callback logic (`progress.Progress`, `guards.RunGuard`, `rundir.MetricsJsonl`,
`watch.RewardWatch`) lives in plain classes whose `on_<event>` methods take the Trainer's arguments, so
their modules import no torch and tests call them directly. `Hooks` hands the Trainer each event the
object defines and reads every other attribute through (`watch.summary()`, `progress.note`; writes too); one
subclass per object kind, because the Trainer warns when two callbacks share a class. This module is
imported only where a trainer is built, and imports nothing of ours.
"""

from __future__ import annotations

from transformers import TrainerCallback

EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))


class Hooks(TrainerCallback):
    """Forwards each Trainer event `target` has a method for; the others stay TrainerCallback's no-ops."""

    def __init__(self, target):
        self.target = target
        for event in EVENTS:
            if callable(getattr(target, event, None)):
                setattr(self, event, getattr(target, event))

    def __getattr__(self, name: str):
        if name == "target":  # not set yet (copy/pickle build objects without __init__)
            raise AttributeError(name)
        return getattr(self.target, name)

    def __setattr__(self, name: str, value) -> None:
        """Events and `target` belong to the adapter; every other attribute is the target's."""
        if name == "target" or name.startswith("on_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.target, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.target).__name__})"


class MetricsHooks(Hooks):
    """metrics.jsonl: every logged dict (`rundir.MetricsJsonl`)."""


class GuardHooks(Hooks):
    """Stop signals, non-finite values, checkpoint markers (`guards.RunGuard`)."""


class ProgressHooks(Hooks):
    """The live bar or log lines (`progress.Progress`)."""


class WatchHooks(Hooks):
    """The reward-hacking watch (`watch.RewardWatch`)."""
