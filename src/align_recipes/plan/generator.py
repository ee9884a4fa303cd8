"""Which engine samples an online algorithm's completions: vLLM (colocated or a server) or transformers'
``generate``. summary.json records it, and `show` and the run report print it. The numbers of a run that
sampled through vLLM's CPU build and one that sampled with transformers are not the same run, so the record
must say which it was. Reads the plan and the installed distributions only (no torch)."""

from __future__ import annotations

from typing import Any

from align_recipes.plan.hardware import package_version, vllm_distribution

LOCAL_SERVER = "local (started by the run)"


def given_server(plan) -> str | None:
    """The vLLM server the recipe names (``vllm_server_base_url``, or ``vllm_server_host`` and
    ``vllm_server_port``), or the one a GPU profile that chose server mode tells the user to start (`show`
    prints its command; TRL's default address), or None: then the run starts its own (rl/vllm_server.py)."""
    train = plan.train
    if train.get("vllm_server_base_url"):
        return str(train["vllm_server_base_url"])
    by_profile = plan.source("train.vllm_mode").startswith("profile")
    if "vllm_server_host" in train or "vllm_server_port" in train or by_profile:
        return f"http://{train.get('vllm_server_host', '0.0.0.0')}:{train.get('vllm_server_port', 8000)}"
    return None


def generator_record(plan) -> dict[str, Any] | None:
    """``{"engine": "vllm"|"transformers", "mode": "colocate"|"server"|None, "version": …}`` for an algorithm
    that generates while it trains (registry trait `generates`); None for the others."""
    if not getattr(plan.algorithm, "generates", False):
        return None
    effective = plan.effective_config()
    use_vllm = bool(effective.get("use_vllm", (False, ""))[0])
    if not use_vllm:
        return {"engine": "transformers", "mode": None, "version": package_version("transformers")}
    mode = effective.get("vllm_mode", ("colocate", ""))[0] or "colocate"
    found = vllm_distribution()
    record: dict[str, Any] = {"engine": "vllm", "mode": mode, "version": found[1] if found else None}
    if mode == "server":
        record["server"] = given_server(plan) or LOCAL_SERVER
    record.update(engine_knobs(effective))
    return record


def engine_knobs(effective: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """The vLLM engine settings a recipe changed from the default (tensor parallelism, sleep mode, the cap on
    sequences at once), keyed as the record keeps them; TRL's defaults are left out."""
    value = lambda key: (effective.get(key) or (None, ""))[0]  # noqa: E731
    knobs: dict[str, Any] = {}
    if (value("vllm_tensor_parallel_size") or 1) > 1:
        knobs["tensor_parallel_size"] = value("vllm_tensor_parallel_size")
    if value("vllm_enable_sleep_mode"):
        knobs["sleep_mode"] = True
    if value("vllm_max_num_seqs"):
        knobs["max_num_seqs"] = value("vllm_max_num_seqs")
    return knobs


def _knob_words(record: dict[str, Any]) -> str:
    words = []
    if record.get("tensor_parallel_size"):
        words.append(f"tensor parallel over {record['tensor_parallel_size']}")
    if record.get("sleep_mode"):
        words.append("sleeps between generations")
    if record.get("max_num_seqs"):
        words.append(f"at most {record['max_num_seqs']} sequences at once")
    return f" ({', '.join(words)})" if words else ""


def describe(record: dict[str, Any] | None) -> str | None:
    """One line for `show` and the report: 'vLLM 0.30.0+cpu, colocated' / 'transformers 5.23.0 generate'."""
    if not record:
        return None
    version = f" {record['version']}" if record.get("version") else ""
    if record.get("engine") != "vllm":
        return f"transformers{version} generate (train.use_vllm=false)"
    if record.get("mode") == "server":
        return f"vLLM{version}, server: {record.get('server', '?')}{_knob_words(record)}"
    return f"vLLM{version}, colocated with training{_knob_words(record)}"
