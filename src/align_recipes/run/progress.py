"""Training progress people can read: on a terminal a live bar with the ETA and the algorithm's key
metrics, otherwise one compact line per log ("step 40/336 · loss 0.412 · lr 1.2e-03 · 0.09 s/step · eta 27s").

tqdm draws the bar: transformers already depends on it, and its rate and ETA estimates are well
tried. The Trainer's own bar is off because align-recipes mutes library logging (transformers then
falls back to printing each log as a dict); this callback takes both places. Every value still goes
to metrics.jsonl.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO


def key_metrics(algorithm) -> tuple[str, ...]:
    """What to show beside the loss, from the algorithm's traits: the quantity it optimises."""
    keys = ["loss"]
    if algorithm.implicit_reward:
        keys += ["rewards/margins", "rewards/accuracies"]
    if algorithm.model_head == "reward":
        keys += ["accuracy", "margin"]
    if algorithm.generates:
        keys += ["reward", "kl"]
    return (*keys, "learning_rate")


SHORT = {"learning_rate": "lr", "rewards/margins": "margin", "rewards/accuracies": "acc"}


def format_value(value: float) -> str:
    """4 significant digits; small or large numbers in scientific notation."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.1e}"
    return f"{value:.4g}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def metrics_text(logs: dict, keys: tuple[str, ...]) -> str:
    return " · ".join(
        f"{SHORT.get(k, k)} {f'{logs[k]:.1e}' if k == 'learning_rate' else format_value(logs[k])}"
        for k in keys
        if isinstance(logs.get(k), (int, float))
    )


def _terminal_has_size(stream) -> bool:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return size.columns > 0 and size.lines > 0


class Progress:
    """The bar or the log lines, for the main process; the Trainer reaches it through `callbacks.ProgressHooks`."""

    def __init__(self, keys: tuple[str, ...], stream: IO | None = None, interactive: bool | None = None):
        self.keys = keys
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.bar = None
        self.started = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started, self.first_step = time.time(), state.global_step
        if self.interactive:
            from tqdm.auto import tqdm

            # A terminal that reports no size (a pty under `script`, some CI runners) gets a fixed one: with
            # 0 rows tqdm would draw nothing at all.
            sized = _terminal_has_size(self.stream)
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                unit="step",
                file=self.stream,
                dynamic_ncols=sized,
                **({} if sized else {"ncols": 100, "nrows": 20}),
                smoothing=0.1,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        text = metrics_text(logs, self.keys)
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif text:
            print(
                f"step {state.global_step}/{state.max_steps} · {text}{self._pace(state)}",
                file=self.stream,
                flush=True,
            )

    def note(self, text: str) -> None:
        """A line of its own: above the bar on a terminal (the bar is redrawn below it)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _pace(self, state) -> str:
        done = state.global_step - self.first_step
        if not self.started or done <= 0:
            return ""
        per_step = (time.time() - self.started) / done
        left = max(0, state.max_steps - state.global_step) * per_step
        return f" · {per_step:.2f} s/step · eta {format_seconds(left)}"

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_callback(keys: tuple[str, ...], stream: IO | None = None, interactive: bool | None = None):
    """The Trainer callback showing progress (importing this module imports no torch; this does)."""
    from align_recipes.run.callbacks import ProgressHooks

    return ProgressHooks(Progress(keys, stream, interactive))
