"""``builtin:tiny-qwen2-sft``: the tiny model after the toy task's supervised fine-tuning, built on first use.

Every tiny recipe after SFT (reward, dpo, kto, grpo, ppo, spo) starts from an SFT policy, as the
classic flow does. Naming this builtin lets each of them train from a fresh clone with
`align-recipes train` alone. The first run that needs it prints one line and builds it: about 30 s
on one CPU thread. The result is cached beside the tiny model, in
``$ALIGN_RECIPES_CACHE/tiny-qwen2-sft-<hash>``.

The build is `recipes/tiny/sft.yaml` with the cpu profile, run as a plain TRL script. It uses the
same rows (`toytask.generate_rows("sft")`, which are `recipes/tiny/data/sft.jsonl`), the same
`SFTConfig` values (`TRAIN`), seed 42 and one CPU thread. It also writes the same way
`ensure_tiny_model` does: into a temporary directory that is renamed into place. With the same
seed it gives the same weights as `align-recipes train recipes/tiny/sft.yaml`; tests check both
that and that `TRAIN` matches the recipe.

Why this is plain TRL and not `run.train`: `tiny/` sits below `plan/` and `run/` and must not import
them (docs/architecture.md). An installed package also has no `recipes/` folder to read. The
builder needs nothing the package lacks.

Under `accelerate launch` (WORLD_SIZE > 1) the build runs in a child process with no distributed
environment, and a file lock lets one rank build while the others wait. Training it inside a rank
would join the ranks' process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from align_recipes import reproducible, tiny
from align_recipes.tiny import toytask

TINY_SFT_ID = "builtin:tiny-qwen2-sft"
BUILDER_VERSION = "1"  # bump when the build changes what it writes

# recipes/tiny/sft.yaml's training values (tests/tiny/test_tiny_sft.py keeps them equal).
TRAIN: dict[str, Any] = {
    "learning_rate": 1.5e-3,
    "num_train_epochs": 48,  # 336 steps of 32
    "per_device_train_batch_size": 32,
    "max_length": 64,
    "assistant_only_loss": True,
    "seed": 42,
}
# What the cpu profile and recipes/tiny/_base.yaml add; none of it changes the weights.
RUNTIME: dict[str, Any] = {
    "use_cpu": True,
    "bf16": False,
    "fp16": False,
    "activation_checkpointing": False,
    "dataloader_num_workers": 0,
    "save_strategy": "no",
    "report_to": "none",
    "logging_strategy": "no",
    "disable_tqdm": True,
}
EVAL_NEW_TOKENS = 8
# torchrun/accelerate variables a child process must not inherit, or it would join the process group.
DISTRIBUTED_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
)


def _versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "trl"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "none"
    return found


def build_hash() -> str:
    """Short hash of everything the weights depend on: the tiny model, rows, settings, library versions."""
    payload = {
        "builder": BUILDER_VERSION,
        "pins": reproducible.PINS,
        "mkl_path": reproducible.mkl_path(),  # Intel and AMD CPUs train different weights even when pinned
        "base": tiny.asset_hash(),
        "train": TRAIN,
        "runtime": RUNTIME,
        "rows": toytask.generate_rows("sft"),
        "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def tiny_sft_dir(cache_dir: Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else tiny.default_cache_root()
    return root / f"tiny-qwen2-sft-{build_hash()}"


def _is_complete(path: Path) -> bool:
    return (path / tiny.MARKER_FILE).is_file()


def ensure_tiny_sft(cache_dir: Path | None = None) -> Path:
    """Build the tiny SFT policy once (see the module docstring) and return its directory."""
    from filelock import FileLock  # torch's own dependency: present wherever the build can run

    final = tiny_sft_dir(cache_dir)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        if _is_complete(final):  # another process built it while this one waited
            return final
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"building {TINY_SFT_ID} (once): the tiny model fine-tuned on the toy task, "
                f"{_steps()} SFT steps on one CPU thread, about 30 s; cached in {final}",
                flush=True,
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not reproducible.holds_here():
            _build_in_child(final.parent)
        else:
            _build_into(final, cache_dir)
    if not _is_complete(final):
        raise RuntimeError(f"building {TINY_SFT_ID} left no complete model in {final}")
    return final


def _steps() -> int:
    rows = len(toytask.generate_rows("sft"))
    return -(-rows // TRAIN["per_device_train_batch_size"]) * TRAIN["num_train_epochs"]


def _build_in_child(cache_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    reproducible.pin_environment(env)
    env[tiny.CACHE_ENV] = str(cache_root)
    # --unlocked: this process holds the lock the child would otherwise wait for.
    subprocess.run(
        [sys.executable, "-m", "align_recipes.tiny.sft", "--unlocked"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _build_into(final: Path, cache_dir: Path | None) -> None:
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-", dir=final.parent)
    )
    os.chmod(tmp, 0o755)
    try:
        info = train_into(tmp, tiny.ensure_tiny_model(cache_dir))
        (tmp / tiny.MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final):  # another process renamed its identical build into place first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def train_into(target: Path, base_dir: Path) -> dict[str, Any]:
    """SFT of the tiny model in `base_dir` with `TRAIN`; saves model and tokenizer into `target` and
    returns what the cache marker records (settings, versions, held-out exact match, seconds)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    started = time.time()
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    torch.set_num_threads(1)  # the tiny model trains fastest on one thread (run/load.py)
    hf_logging.set_verbosity_error()
    scratch = target / "trainer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        config = SFTConfig(output_dir=str(scratch), **TRAIN, **RUNTIME)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(toytask.generate_rows("sft")),
            processing_class=tokenizer,
        )
        trainer.train()
        with tiny.quiet_transformers():
            trainer.save_model(str(target))
        scores = toytask.evaluate_task(
            trainer.model, tokenizer, toytask.generate_rows("eval"), max_new_tokens=EVAL_NEW_TOKENS
        )
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(scratch, ignore_errors=True)
    (target / "training_args.bin").unlink(missing_ok=True)  # a pickle of SFTConfig: nothing a user needs
    for path in target.iterdir():
        path.chmod(0o644)
    return {
        "model_id": TINY_SFT_ID,
        "hash": build_hash(),
        "base": str(base_dir),
        "train": TRAIN,
        "versions": _versions(),
        "steps": trainer.state.global_step,
        "held_out_exact_match": scores["exact_match"],
        "seconds": round(time.time() - started, 1),
    }


def main(argv: list[str]) -> int:
    """`python -m align_recipes.tiny.sft`: build (if needed) and print where. `--unlocked` builds without
    taking the lock, for the child `ensure_tiny_sft` starts while it holds it."""
    if "--unlocked" in argv:
        final = tiny_sft_dir()
        if not _is_complete(final):
            _build_into(final, None)
        print(final)
    else:
        print(ensure_tiny_sft())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
