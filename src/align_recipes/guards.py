"""What keeps a run from losing work or leaking secrets: checkpoint discovery, resume planning,
Ctrl-C/SIGTERM handling, the non-finite loss guard and redaction.

Importing this module imports neither torch nor transformers: `plan_start` (which checkpoint a run
continues from) runs before any model loads, so a run that cannot resume fails in milliseconds. The
Trainer callback is built on demand by `RunGuard.callback()`.

Checkpoints. A `checkpoint-<step>` directory is *complete* when the Trainer finished writing it:
its `trainer_state.json` (written last by the Trainer, after the weights, optimizer, scheduler and
RNG state) parses and names the same step, the weights are there and their safetensors headers
match the file sizes, the optimizer and RNG state are there (unless `save_only_model`), and, when
our marker `align_recipes_checkpoint.json` exists (written after the Trainer's save returns, listing
every file with its size), every listed file has that size and the marker says `complete`. A
checkpoint saved while the weights were already non-finite gets a `diverged` marker. Anything
else was cut short (killed mid-save, disk full, copied partially) and is skipped, never loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from align_recipes.errors import RecipeError

MARKER = "align_recipes_checkpoint.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
RESUME_AUTO, RESUME_LATEST = "auto", "latest"


# ------------------------------------------------------------------------------------------ secrets

SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth"}
SPECIAL_TOKENS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "image", "audio", "video", "vision", "think",
                  "start", "end", "special", "additional", "default"}
REDACTED = "***"
_MIN_SECRET_LENGTH = 6  # shorter environment values ("1", "true") are not worth hiding and would mangle text


def is_secret_name(name: Any) -> bool:
    """An environment variable that may hold a secret: anything with TOKEN, KEY, SECRET, PASSWORD in its
    name (HF_TOKEN, MODELSCOPE_API_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY), except TOKENIZERS_*."""
    upper = str(name).upper()
    return not upper.startswith("TOKENIZERS") and any(marker in upper for marker in SECRET_MARKERS)


def is_secret_key(name: Any) -> bool:
    """A recipe or config key that holds a secret (hub_token, api_key, wandb.secret), but not a special
    token's name such as pad_token or eos_token."""
    parts = [p for p in re.split(r"[^a-z0-9]+", str(name).lower().rsplit(".", 1)[-1]) if p]
    if not parts:
        return False
    if parts[-1] in ("token", "tokens") and len(parts) >= 2 and parts[-2] in SPECIAL_TOKENS:
        return False
    return any(p in SECRET_WORDS for p in parts) or parts[-1] == "key"


def secret_values(environ: dict | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so overlapping ones redact fully)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v.strip()) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every secret value from the environment (and `extra`) replaced by ***."""
    for secret in [*secret_values(), *[e for e in extra if e and len(str(e)) >= _MIN_SECRET_LENGTH]]:
        text = text.replace(str(secret), REDACTED)
    return text


def redact_obj(value: Any, key: Any = None) -> Any:
    """A copy of a JSON/YAML-like value where secret-named keys and secret environment values are hidden."""
    if key is not None and is_secret_key(key) and isinstance(value, str) and value:
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_obj(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Command-line words with `secret_key=value` overrides and secret environment values hidden."""
    out = []
    for word in argv:
        key, sep, _ = str(word).partition("=")
        out.append(f"{key}={REDACTED}" if sep and is_secret_key(key) else redact(str(word)))
    return out


# -------------------------------------------------------------------------------------- checkpoints

def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` directories, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor bytes it describes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"{path.name} is truncated (header of {length} bytes in a {size}-byte file)"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        return f"{path.name} cannot be read ({type(exc).__name__})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + length + end:
        return f"{path.name} is truncated ({size} bytes, its header describes {8 + length + end})"
    return None


def _weights_problem(path: Path) -> str | None:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _safetensors_problem(path / name) if name.endswith(".safetensors") else None
    for name in INDEX_FILES:
        if (path / name).is_file():
            try:
                shards = set(json.loads((path / name).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return f"{name} cannot be read"
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"weight shard {missing[0]} is missing"
            for shard in sorted(shards):
                if shard.endswith(".safetensors") and (problem := _safetensors_problem(path / shard)):
                    return problem
            return None
    if (path / "latest").is_file() or any(p.name.startswith("pytorch_model_fsdp") for p in path.iterdir()):
        return None  # DeepSpeed / FSDP sharded checkpoints: the engine checks its own files
    return "no model weights"


def checkpoint_problem(path: Path, require_optimizer: bool = True) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from; None when it is complete."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    marker = read_marker(path)
    if marker is not None and marker.get("status") != "complete":
        return f"marked {marker.get('status')}: {marker.get('reason', '')}".rstrip(": ")
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save was cut short)"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is not valid JSON (the save was cut short)"
    step = checkpoint_step(path)
    if step is not None and state.get("global_step") != step:
        return f"trainer_state.json is for step {state.get('global_step')}, not {step}"
    problem = _weights_problem(path)
    if problem:
        return problem
    if require_optimizer and not (path / "latest").is_file():
        if not any((path / name).is_file() for name in OPTIMIZER_FILES) and not (path / "optimizer_0").is_dir():
            return "no optimizer state (optimizer.pt)"
        if not any(p.name.startswith("rng_state") for p in path.iterdir()):
            return "no RNG state (rng_state.pth)"
    for name, size in (marker or {}).get("files", {}).items():
        target = path / name
        if not target.is_file():
            return f"{name} is missing"
        if target.stat().st_size != size:
            return f"{name} is {target.stat().st_size} bytes, {size} were written"
    return None


def newest_complete(output_dir: Path, require_optimizer: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint and the newer ones skipped (with why)."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, require_optimizer)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def write_marker(path: Path, status: str = "complete", reason: str = "") -> None:
    """Record that a checkpoint was fully written (every file and its size), atomically."""
    path = Path(path)
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
             if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}")}
    payload = {"status": status, "step": checkpoint_step(path), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "files": files}
    if reason:
        payload["reason"] = reason
    tmp = path / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(payload, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path / MARKER)


# ------------------------------------------------------------------------------------ resume planning

@dataclass
class Start:
    """Where a run starts: from scratch (checkpoint None) or from a complete checkpoint."""

    checkpoint: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    mode: str | None = None  # None | auto | latest | a path
    fresh_over_leftovers: bool = False  # `auto` found nothing to resume in a directory a crashed run left

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.checkpoint) if self.checkpoint else None


def _skipped_text(skipped: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{p.name} skipped: {why}" for p, why in skipped[:3]) + \
        (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")


def run_status(output_dir: Path) -> str | None:
    """The `status` of the run whose summary.json is in output_dir (None when there is none)."""
    try:
        return json.loads((Path(output_dir) / "summary.json").read_text()).get("status", "complete")
    except (OSError, ValueError, AttributeError):
        return None


def plan_start(output_dir: Path, mode: str | None, overwrite: bool, require_optimizer: bool = True,
               base_dir: Path | None = None) -> Start:
    """Decide, before anything heavy is imported, whether a run starts fresh or from a checkpoint.

    mode: None (start fresh; an output_dir holding a run is refused unless overwrite), "auto" (the
    newest complete checkpoint if there is one, else fresh), "latest" (`--resume`: the newest complete
    checkpoint, an error if there is none) or the path of one checkpoint directory.
    """
    from align_recipes import outputs

    output_dir = Path(output_dir)
    key = "train.resume_from_checkpoint"
    if mode in ("", "none", "null", "no", "false"):
        mode = None
    if overwrite and mode:
        raise RecipeError("--overwrite and resuming contradict each other", key=key,
                          fix="drop --overwrite to continue the run, or drop --resume / resume_from_checkpoint "
                              "to replace it")
    if overwrite or mode is None:
        outputs.guard_output_dir(output_dir, overwrite=overwrite, resume=False)
        return Start(mode=mode)
    if mode not in (RESUME_AUTO, RESUME_LATEST):
        candidates = [Path(mode).expanduser()]
        if not candidates[0].is_absolute():
            candidates += [output_dir / mode, *([Path(base_dir) / mode] if base_dir else [])]
        path = next((c for c in candidates if c.is_dir()), None)
        newest, _ = newest_complete(output_dir, require_optimizer)
        other = f"the newest complete one is {newest}" if newest else f"{output_dir} has no complete checkpoint"
        if path is None:
            raise RecipeError(f"checkpoint '{mode}' not found", key=key,
                              fix=f"give a checkpoint-<step> directory, or `auto` / --resume; {other}")
        problem = checkpoint_problem(path, require_optimizer)
        if problem:
            raise RecipeError(f"checkpoint {path} is incomplete: {problem}", key=key,
                              fix=f"it was cut short and cannot be loaded; {other}")
        return Start(checkpoint=path, mode=mode)
    checkpoint, skipped = newest_complete(output_dir, require_optimizer)
    if checkpoint is not None:
        return Start(checkpoint=checkpoint, skipped=skipped, mode=mode)
    why = f" ({_skipped_text(skipped)})" if skipped else ""
    if mode == RESUME_LATEST:
        where = "does not exist" if not output_dir.exists() else "holds no complete checkpoint" + why
        raise RecipeError(f"nothing to resume: {output_dir} {where}", key="--resume",
                          fix="checkpoints are written every train.save_steps (with train.save_strategy: steps) "
                              "and when a run is stopped with Ctrl-C; run without --resume to start over "
                              "(add --overwrite if the directory holds a run)")
    # auto: nothing to resume. A finished run is never replaced silently; a crashed one is restarted.
    if run_status(output_dir) == "complete":
        raise RecipeError(f"output_dir '{output_dir}' holds a finished run and no checkpoint to continue from",
                          key="train.output_dir",
                          fix="pass --overwrite to replace it, or train.output_dir=… to write elsewhere")
    return Start(mode=mode, skipped=skipped, fresh_over_leftovers=output_dir.exists())


def command_words(command: list[str] | None) -> list[str]:
    """sys.argv as the user would type it again: `python -m align_recipes` and full paths become align-recipes."""
    words = [str(w) for w in (command or [])]
    if words and (words[0].endswith(("__main__.py", "align_recipes", "align-recipes")) or words[0] == "-m"):
        words[0] = "align-recipes"
    return words


def resume_command(command: list[str] | None) -> str:
    """The exact command that continues an interrupted run: the same words, --resume instead of --overwrite."""
    words = command_words(command)
    if not words:
        return "align-recipes train RECIPE --resume"
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(redact_argv(words))


# ------------------------------------------------------------------------------------- interruptions

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
    def install(self) -> "RunGuard":
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

    def __enter__(self) -> "RunGuard":
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
            self._say(f"\n{name} received: saving a checkpoint at the end of this step, then stopping "
                      "(send it again to stop at once, without saving)")
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
        from transformers import TrainerCallback

        guard = self

        class RunGuardCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                guard.phase = "training"

            def on_step_end(self, args, state, control, **kwargs):
                if guard.world_signal(args) and guard.diverged is None:
                    control.should_save = True
                    control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and guard.check_logs(logs, state.global_step):
                    control.should_save = False  # never checkpoint a broken model
                    control.should_training_stop = True

            def on_save(self, args, state, control, model=None, **kwargs):
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                finite = params_finite(model)
                if state.is_world_process_zero and checkpoint.is_dir():
                    write_marker(checkpoint, "complete" if finite else "diverged",
                                 "" if finite else "the weights were already non-finite when it was saved")
                if finite:
                    guard.last_good = checkpoint
                elif guard.diverged is None:
                    guard.diverged = {"step": state.global_step, "values": {"weights": "non-finite"}}
                    control.should_training_stop = True

            def on_train_end(self, args, state, control, **kwargs):
                guard.phase = "finishing"

        return RunGuardCallback()

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
            return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad and p.numel())
    except Exception:  # noqa: BLE001 - sharded or exotic parameters: do not block saving
        return True


def likely_causes(config, tokenizer=None, algorithm: str = "") -> list[str]:
    """Likely reasons for a non-finite loss, most likely first, each with what to change."""
    causes = []
    lr = float(getattr(config, "learning_rate", 0) or 0)
    if getattr(config, "fp16", False):
        causes.append("fp16 overflow: float16 cannot hold this model's activations or gradients (typical on a "
                      "T4): lower train.learning_rate, keep train.max_grad_norm at 1.0, or use float32 "
                      "(model.dtype: float32, train.fp16: false); bf16 needs an Ampere or newer GPU")
    causes.append(f"learning rate too high: train.learning_rate is {lr:g}; lower it (e.g. {lr / 10:g}; typical "
                  "values are 1e-6 to 1e-4 for full fine-tuning, 1e-5 to 1e-3 for LoRA)")
    pad, eos = getattr(tokenizer, "pad_token", None), getattr(tokenizer, "eos_token", None)
    if tokenizer is not None and (pad is None or pad == eos):
        causes.append(f"missing pad token: the tokenizer has none of its own and pads with eos {eos!r}; with "
                      "fp16 (Qwen) this gives NaN losses: add a pad token or train in bf16/float32")
    if not getattr(config, "max_grad_norm", 1.0):
        causes.append("gradient clipping is off (train.max_grad_norm: 0): set it to 1.0")
    if algorithm in ("sft", "dpo", "orpo", "kto", "reward"):
        causes.append("batches with no trained tokens (every completion cut off by train.max_length) divide 0 by 0: "
                      "raise max_length or drop very long rows")
    return causes


__all__ = ["MARKER", "RunGuard", "RunInterrupted", "TrainingDiverged", "Start", "plan_start", "checkpoint_problem",
           "newest_complete", "list_checkpoints", "write_marker", "resume_command", "command_words", "likely_causes",
           "redact", "redact_obj", "redact_argv", "secret_values", "is_secret_name", "is_secret_key", "params_finite",
           "run_status"]
