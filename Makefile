# divscale: `make figures` runs the study (cpu profile by default), `make test` runs the tests.
# Both set up .venv themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= cpu
JOBS ?= 1
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup data test test-fast figures results notebooks clean bench

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# CPU torch first (on GPU machines: TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu124')
	$(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/pip check
	touch $@

setup: $(VENV)/.installed  ## create .venv and install divscale with its dependencies

data: setup  ## fetch HH-RLHF from the hub into data/hh-rlhf (offline: link a local copy there instead)
	HF_HUB_OFFLINE=0 $(PY) -m divscale.data download --out data/hh-rlhf

test: setup  ## run the test suite (offline)
	$(PY) -m pytest -q

test-fast: setup  ## tests without the slow (training, notebook) ones
	$(PY) -m pytest -q -m "not slow and not notebooks"

bench: setup  ## speed/memory benchmarks (ratios against a baseline in the same run)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove build products only (not data/, not committed results or figures)
	rm -rf runs/ .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
