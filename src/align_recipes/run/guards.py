"""What keeps a run from losing work when it is stopped or breaks: Ctrl-C/SIGTERM become "save a
checkpoint, then stop with the resume command", and a loss or gradient that is no longer finite stops
the run with its likely causes, keeping the last good checkpoint (see `checkpoints` for which
checkpoints count as complete).

Importing this module imports neither torch nor transformers; the Trainer callback is built on demand
by `RunGuard.callback()`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.registry import ALGORITHMS
from align_recipes.run.checkpoints import write_marker

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunInterrupted(KeyboardInterrupt):
    """Raised when Ctrl-C or SIGTERM stopped a run; the CLI prints `message` and exits with `exit_code`."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + int(signum))
        self.message = message


class TrainingDiverged(RecipeError):
    """A non-finite loss or gradient: the run stopped, its last good checkpoint is kept."""


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return str(signum)


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, (int, float)) or isinstance(value, bool) or math.isfinite(value)


def _watched(key: str) -> bool:
    return key == "grad_norm" or key == "loss" or key.endswith("loss")


class RunGuard:
    """State shared by the signal handlers and the Trainer callback of one run.

    Phases: `setup` (loading; a signal stops at once, nothing to save), `training` (a signal asks the
    Trainer to save a checkpoint at the end of the current step and stop), `finishing` (after the
    loop: the final save is allowed to complete). A second signal always stops at once.
    """

    FP16_TOLERATED_LOGS = 3  # fp16 loss scaling skips steps whose gradients overflow; only a streak is fatal

    def __init__(self, output_dir: Path | None = None, fp16: bool = False):
        self.output_dir = Path(output_dir) if output_dir else None
        self.fp16 = fp16
        self.phase = "setup"
        self.signum: int | None = None
        self.signal_phase: str | None = None  # the phase the first signal arrived in
        self.diverged: dict | None = None
        self.last_good: Path | None = None
        self._fp16_streak = 0
        self._previous: dict[int, Any] = {}

    # signals ------------------------------------------------------------------------------------
    def install(self) -> RunGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # not the main thread: leave the defaults alone
                pass
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        self._previous = {}

    def __enter__(self) -> RunGuard:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def _say(self, text: str) -> None:
        try:
            os.write(sys.stderr.fileno(), (text + "\n").encode())  # safe inside a signal handler
        except (OSError, ValueError, AttributeError):
            pass

    def _handle(self, signum, frame) -> None:
        name = signal_name(signum)
        if self.phase == "setup":
            self.restore()
            raise RunInterrupted(signum, f"{name}: stopped before training started; nothing to save")
        self.signum, self.signal_phase = signum, self.phase
        self.restore()  # a second Ctrl-C / SIGTERM stops at once
        if self.phase == "training":
            self._say(
                f"\n{name} received: saving a checkpoint at the end of this step, then stopping "
                "(send it again to stop at once, without saving)"
            )
        else:
            self._say(f"\n{name} received: letting the final save finish (send it again to stop at once)")

    # the trainer callback -----------------------------------------------------------------------
    def check_logs(self, logs: dict, step: int) -> bool:
        """True (and `diverged` set) when logged values show a non-finite loss or gradient."""
        bad = {k: v for k, v in logs.items() if _watched(str(k)) and not _is_finite_number(v)}
        if not bad:
            self._fp16_streak = 0
            return False
        if self.fp16 and set(bad) == {"grad_norm"}:
            self._fp16_streak += 1
            if self._fp16_streak < self.FP16_TOLERATED_LOGS:
                return False
        self.diverged = {"step": step, "values": {k: str(v) for k, v in bad.items()}}
        return True

    def callback(self):
        """The Trainer callback for this guard (importing this module imports no torch; this does)."""
        from align_recipes.run.callbacks import GuardHooks

        return GuardHooks(self)

    def on_train_begin(self, args, state, control, **kwargs):
        self.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        if self.world_signal(args) and self.diverged is None:
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.check_logs(logs, state.global_step):
            control.should_save = False  # never checkpoint a broken model
            control.should_training_stop = True

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        finite = params_finite(model)
        if state.is_world_process_zero and checkpoint.is_dir():
            write_marker(
                checkpoint,
                "complete" if finite else "diverged",
                "" if finite else "the weights were already non-finite when it was saved",
            )
        if finite:
            self.last_good = checkpoint
        elif self.diverged is None:
            self.diverged = {"step": state.global_step, "values": {"weights": "non-finite"}}
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.phase = "finishing"

    def world_signal(self, args) -> bool:
        """Whether any process received a stop signal (all processes must stop at the same step)."""
        local = int(self.signum or 0)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return bool(local)
        try:
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                return bool(local)
            flag = torch.tensor([local], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not self.signum:  # another process was signalled: stop here too
                self.signum, self.signal_phase = int(flag.item()), "training"
            return bool(flag.item())
        except Exception:  # noqa: BLE001 - a failed sync must not kill the run
            return bool(local)


def params_finite(model) -> bool:
    """Whether every trainable parameter is finite (True when there is no model to look at)."""
    if model is None:
        return True
    try:
        import torch

        with torch.no_grad():
            return all(
                bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad and p.numel()
            )
    except Exception:  # noqa: BLE001 - sharded or exotic parameters: do not block saving
        return True


def likely_causes(config, tokenizer=None, algorithm: str = "") -> list[str]:
    """Likely reasons for a non-finite loss, most likely first, each with what to change."""
    causes = []
    lr = float(getattr(config, "learning_rate", 0) or 0)
    if getattr(config, "fp16", False):
        causes.append(
            "fp16 overflow: float16 cannot hold this model's activations or gradients (typical on a "
            "T4): lower train.learning_rate, keep train.max_grad_norm at 1.0, or use float32 "
            "(model.dtype: float32, train.fp16: false); bf16 needs an Ampere or newer GPU"
        )
    causes.append(
        f"learning rate too high: train.learning_rate is {lr:g}; lower it (e.g. {lr / 10:g}; typical "
        "values are 1e-6 to 1e-4 for full fine-tuning, 1e-5 to 1e-3 for LoRA)"
    )
    pad, eos = getattr(tokenizer, "pad_token", None), getattr(tokenizer, "eos_token", None)
    if tokenizer is not None and (pad is None or pad == eos):
        causes.append(
            f"missing pad token: the tokenizer has none of its own and pads with eos {eos!r}; with "
            "fp16 (Qwen) this gives NaN losses: add a pad token or train in bf16/float32"
        )
    if not getattr(config, "max_grad_norm", 1.0):
        causes.append("gradient clipping is off (train.max_grad_norm: 0): set it to 1.0")
    if getattr(ALGORITHMS.get(algorithm), "truncates", False):
        causes.append(
            "batches with no trained tokens (every completion cut off by train.max_length) divide 0 by 0: "
            "raise max_length or drop very long rows"
        )
    return causes
