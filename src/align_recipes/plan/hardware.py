"""What this machine offers for training, found without importing torch: the GPUs (from nvidia-smi's
CSV, or a fake of it in $ALIGN_RECIPES_NVIDIA_SMI), the optional packages that switch kernels and
backends on (vllm, flash_attn, bitsandbytes: looked up with `importlib.util.find_spec` and package
metadata), and the sharding that `accelerate launch` asked for. Profiles (`profiles.py`, `profile_layer.py`) and the
compatibility checks (`compat.py`) decide from these facts; `validate` stays fast because nothing here
loads a CUDA library.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

# TRL 1.16's supported vLLM range (trl.import_utils.is_vllm_available warns outside it).
VLLM_MIN, VLLM_MAX = (0, 22), (0, 31)
# Environment variable holding fake `nvidia-smi` CSV output (tests, "what would happen on 8xH100").
FAKE_SMI_ENV = "ALIGN_RECIPES_NVIDIA_SMI"
SMI_QUERY = "name,memory.total,compute_cap"

ARCHITECTURES = [  # (lowest compute capability, name), newest first
    (12.0, "Blackwell"),
    (10.0, "Blackwell"),
    (9.0, "Hopper"),
    (8.9, "Ada"),
    (8.0, "Ampere"),
    (7.5, "Turing"),
    (7.0, "Volta"),
    (6.0, "Pascal"),
    (0.0, "pre-Pascal"),
]
# Compute capability by name, for drivers too old to report compute_cap.
KNOWN_CAPABILITY = [
    ("h100", 9.0),
    ("h200", 9.0),
    ("h800", 9.0),
    ("gh200", 9.0),
    ("b200", 10.0),
    ("a100", 8.0),
    ("a800", 8.0),
    ("a10", 8.6),
    ("a40", 8.6),
    ("a6000", 8.6),
    ("l40", 8.9),
    ("l4", 8.9),
    ("4090", 8.9),
    ("3090", 8.6),
    ("t4", 7.5),
    ("v100", 7.0),
    ("p100", 6.0),
]


@dataclass(frozen=True)
class GPU:
    """What a profile assumes (or `auto` detected) about the accelerator: one entry per machine."""

    name: str
    memory_gb: float
    compute_capability: float
    count: int = 1

    @property
    def arch(self) -> str:
        """'Turing (sm75)'."""
        family = next(label for low, label in ARCHITECTURES if self.compute_capability >= low)
        return f"{family} (sm{int(round(self.compute_capability * 10))})"

    @property
    def has_bf16(self) -> bool:
        return self.compute_capability >= 8.0


# --- detecting the GPU -------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits`.

    Tolerates a header line, MiB units, '[N/A]' fields (MIG, old drivers) and a missing compute_cap
    column (looked up from the name)."""
    gpus = []
    for row in text.strip().splitlines():
        cells = [c.strip() for c in row.split(",")]
        if not cells[0] or cells[0].lower() == "name":
            continue
        memory = _float(cells[1].replace("MiB", "")) if len(cells) > 1 else None
        capability = _float(cells[2]) if len(cells) > 2 else None
        if capability is None:
            capability = next((cc for needle, cc in KNOWN_CAPABILITY if needle in cells[0].lower()), 7.0)
        gpus.append(
            GPU(name=cells[0], memory_gb=round((memory or 0) / 1024, 1), compute_capability=capability)
        )
    return gpus


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _visible(gpus: list[GPU]) -> list[GPU]:
    """Only the GPUs that CUDA_VISIBLE_DEVICES leaves to this process (nvidia-smi lists them all)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    if not ids or ids[0].strip().startswith("-"):
        return []
    picked = [gpus[int(i)] for i in ids if i.strip().isdigit() and int(i) < len(gpus)]
    return picked or gpus[: len(ids)]


def detect_gpus(smi_output: str | None = None) -> list[GPU]:
    """The GPUs this process can use, from nvidia-smi (or from `smi_output` / $ALIGN_RECIPES_NVIDIA_SMI
    when given: the same CSV text, which is how tests fake hardware). An empty list means CPU."""
    if smi_output is None:
        smi_output = os.environ.get(FAKE_SMI_ENV)
    if smi_output is None:
        smi_output = _run_nvidia_smi()
    return _visible(parse_nvidia_smi(smi_output or ""))


@functools.lru_cache(maxsize=1)
def _run_nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    for query in (SMI_QUERY, "name,memory.total"):  # compute_cap needs driver >= 510
        try:
            return subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
    return ""


# --- optional packages, looked up without importing them ------------------------------------------------


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# The distributions that provide the `vllm` module: vLLM's CUDA/ROCm build, and its x86-64 CPU build.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def vllm_distribution() -> tuple[str, str] | None:
    """(distribution, version) of whichever distribution provides the `vllm` module, or None. The CPU build
    installs the module under the name `vllm-cpu`, so reading the `vllm` distribution alone finds nothing."""
    for name in VLLM_DISTRIBUTIONS:
        version = package_version(name)
        if version:
            return name, version
    return None


def vllm_cpu_build() -> bool:
    """The installed vLLM is its CPU build: the `vllm-cpu` distribution, or a version tagged `+cpu` (what
    vLLM's own platform detection reads)."""
    found = vllm_distribution() if has_module("vllm") else None
    return found is not None and (found[0] == "vllm-cpu" or found[1].endswith("+cpu"))


def vllm_status() -> tuple[bool, str]:
    """(usable, reason): installed and within TRL 1.16's supported 0.22-0.31."""
    if not has_module("vllm"):
        return False, "vllm is not installed (pip install 'align-recipes[vllm]')"
    name, version = vllm_distribution() or ("vllm", "?")
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if len(numbers) < 2 or not (VLLM_MIN <= numbers <= VLLM_MAX):
        return False, (
            f"{name} {version} is outside TRL 1.16's supported range 0.22-0.31 "
            f"(pip install 'vllm>=0.22,<=0.31')"
        )
    return True, f"{name} {version} installed" + (" (vLLM's CPU build)" if vllm_cpu_build() else "")


def flash_attention_status(implementation: str, gpu: GPU | None) -> tuple[bool, str]:
    if gpu is None:
        return False, "FlashAttention needs a CUDA GPU"
    need = 9.0 if implementation == "flash_attention_3" else 8.0
    if gpu.compute_capability < need:
        return False, f"{gpu.name} is {gpu.arch}: FlashAttention needs sm{int(need * 10)}+"
    module = "flash_attn_interface" if implementation == "flash_attention_3" else "flash_attn"
    if not has_module(module):
        package = "flash-attn-3" if implementation == "flash_attention_3" else "flash-attn"
        return False, f"{module} is not installed (pip install {package} --no-build-isolation)"
    return True, f"{module} installed on {gpu.arch}"


def bitsandbytes_status() -> tuple[bool, str]:
    if has_module("bitsandbytes"):
        return True, "bitsandbytes installed"
    return False, "bitsandbytes is not installed (pip install 'bitsandbytes>=0.50,<0.51')"


def numa_nodes() -> int:
    """NUMA nodes of this machine (1 where the kernel does not say): vLLM's CPU build binds each tensor-parallel
    worker's threads to a node of its own unless ``VLLM_CPU_OMP_THREADS_BIND`` lists the cores."""
    import re

    try:
        found = [n for n in os.listdir("/sys/devices/system/node") if re.fullmatch(r"node\d+", n)]
    except OSError:
        return 1
    return max(1, len(found))


# --- launcher ----------------------------------------------------------------------------------------------


def hub_token_problem() -> str | None:
    """Why a push to the Hugging Face hub would fail for want of credentials (None: a token is found)."""
    from huggingface_hub import get_token  # imported only when a recipe pushes

    if get_token():
        return None
    return "no Hugging Face token found (neither HF_TOKEN nor a `huggingface-cli login`)"


# report_to name -> (the pip package, the modules any of which transformers' integration accepts)
TRACKERS = {
    "wandb": ("wandb", ("wandb",)),
    "trackio": ("trackio", ("trackio",)),
    "tensorboard": ("tensorboard", ("tensorboard", "tensorboardX")),
    "mlflow": ("mlflow", ("mlflow",)),
    "comet_ml": ("comet-ml", ("comet_ml",)),
    "clearml": ("clearml", ("clearml",)),
    "dvclive": ("dvclive", ("dvclive",)),
    "neptune": ("neptune", ("neptune",)),
    "swanlab": ("swanlab", ("swanlab",)),
    "codecarbon": ("codecarbon", ("codecarbon",)),
    "azure_ml": ("azureml-core", ("azureml",)),
}


def tracker_problems(report_to) -> list[tuple[str, str]]:
    """(tracker, pip package) for each tracker in `report_to` whose package is not installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [
        (str(name), TRACKERS[name][0])
        for name in names
        if name in TRACKERS and not any(has_module(m) for m in TRACKERS[name][1])
    ]


def _truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def sharding() -> tuple[str, int]:
    """('zero3' | 'zero2' | 'zero1' | 'fsdp' | '', world size) from the variables accelerate launch sets."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if _truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")):
        return f"zero{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '2')}", world
    if _truthy(os.environ.get("ACCELERATE_USE_FSDP")):
        return "fsdp", world
    return "", world
