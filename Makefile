# divscale: `make figures` runs the study (cpu profile by default), `make test` runs the tests.
# Both set up .venv themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= cpu
JOBS ?= 2
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false
# One BLAS/OpenMP thread per process: on 2 cores, torch's 2 threads per op slow small models down by
# 10x or more as soon as anything else runs; both cores are used by running 2 grid cells at once.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
# A local copy of the data laid out like shared/data (hh-rlhf/, pro-hh/, oasst1/): linked into data/ when
# data/ lacks it. Without one, divscale reads HH-RLHF from the hub (HF_HUB_OFFLINE=0).
LOCAL_DATA ?= ../shared/data

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

setup: $(VENV)/.installed  ## create .venv, install divscale and its dependencies, link LOCAL_DATA into data/
	@for d in hh-rlhf pro-hh oasst1; do \
	  if [ ! -e data/$$d ] && [ -d "$(LOCAL_DATA)/$$d" ]; then \
	    mkdir -p data && ln -s "$$(cd "$(LOCAL_DATA)/$$d" && pwd)" data/$$d && echo "linked data/$$d -> $(LOCAL_DATA)/$$d"; fi; done

data: setup  ## fetch HH-RLHF from the hub into data/hh-rlhf (offline: link a local copy there instead)
	HF_HUB_OFFLINE=0 $(PY) -m divscale.data download --out data/hh-rlhf

# ---------------------------------------------------------------- the study, rebuilt by Make
# Executed notebooks are build products in runs/<recipe>/notebooks/; each is redone only when its
# notebook, the package or the recipe changed. The grid (04_finetune once per cell, via papermill)
# skips cells that are already complete, so an interrupted `make figures` resumes where it stopped.
NB_OUT := runs/$(RECIPE)/notebooks
DEPS := $(wildcard divscale/*.py) recipes/$(RECIPE).yaml $(VENV)/.installed
RESULTS := results/$(RECIPE)/runs.csv
nb = $(NB_OUT)/$(1).ipynb

$(NB_OUT)/%.ipynb: notebooks/%.ipynb notebooks/%.py $(DEPS)
	$(PY) -m divscale.cli notebook run $* --recipe $(RECIPE)

$(RESULTS): notebooks/04_finetune.ipynb $(DEPS) $(call nb,01_data_construction)
	$(PY) -m divscale.cli grid --recipe $(RECIPE) -j $(JOBS)

$(call nb,05_allocation) $(call nb,06_diversity_regression): $(RESULTS)
$(call nb,02_prompt_diversity) $(call nb,03_reward_models) $(call nb,07_augmentation) \
  $(call nb,08_selection): $(call nb,01_data_construction)

FIGURE_NOTEBOOKS := 01_data_construction 02_prompt_diversity 03_reward_models 05_allocation \
  06_diversity_regression 07_augmentation 08_selection

results: setup $(RESULTS)  ## run the missing cells of RECIPE's grid (default cpu) into results/RECIPE/runs.csv

figures: setup $(foreach n,$(FIGURE_NOTEBOOKS),$(call nb,$(n)))  ## rebuild every figure of RECIPE (default cpu) into figures/RECIPE/
	@echo "figures in figures/$(RECIPE)/:"; ls figures/$(RECIPE)/*.png

notebooks: setup  ## sync every notebooks/*.ipynb from its py:percent source, then check the pairs
	$(PY) -m divscale.cli notebook sync
	$(PY) -m divscale.cli notebook check

test: setup  ## run the test suite (offline)
	$(PY) -m pytest -q

test-fast: setup  ## tests without the slow (training, notebook) ones
	$(PY) -m pytest -q -m "not slow and not notebooks"

bench: setup  ## speed/memory benchmarks (ratios against a baseline in the same run)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove build products only (not data/, not committed results or figures)
	rm -rf runs/ .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
