# divscale: `make figures` runs the study (cpu profile by default), `make test` runs the tests.
# Both set up .venv themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= cpu
JOBS ?= 2
# torch is installed on its own (TORCH_SPEC: a CPU build here, a CUDA build on GPU machines) and is the one
# package the lock leaves out; its own dependencies are locked as the CPU wheel of TORCH_VERSION declares them.
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
# The study's environment: every other package of pyproject.toml's dependencies and `dev` extra, exact versions
# and sha256 hashes, for Python 3.11+ on any platform (`make lock` regenerates it).
LOCK := requirements/lock.txt
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

# `make figures` runs independent notebooks side by side with the grid (JOBS make jobs; the grid itself runs
# JOBS cells at once), so no core idles while a long notebook (07, 08) runs on one.
ifneq ($(filter figures,$(MAKECMDGOALS)),)
MAKEFLAGS += -j$(JOBS)
endif

.PHONY: help setup lock data test test-fast figures results notebooks lab clean bench verify verify-env gpu-check

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# A changed lock (or pyproject.toml) reinstalls: packages move to the lock's versions (ones the lock dropped stay
# until `rm -rf .venv`). Only files whose sha256 the lock lists are accepted; divscale itself is installed without
# dependencies, so nothing unlocked comes in, and `pip check` proves the result complete and consistent.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --require-hashes --no-deps -r $(LOCK)
	# torch, its dependencies held at the lock's versions (GPU machines: TORCH_SPEC='torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cu124')
	grep -E '^[A-Za-z]' $(LOCK) | sed 's/ *\\$$//' > $(VENV)/lock-pins.txt
	$(VENV)/bin/pip install -q $(TORCH_SPEC) -c $(VENV)/lock-pins.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
	touch $@

setup: $(VENV)/.installed  ## create .venv from requirements/lock.txt (exact versions, hashes) + TORCH_SPEC, link LOCAL_DATA into data/
	@for d in hh-rlhf pro-hh oasst1; do \
	  if [ ! -e data/$$d ] && [ -d "$(LOCAL_DATA)/$$d" ]; then \
	    mkdir -p data && ln -s "$$(cd "$(LOCAL_DATA)/$$d" && pwd)" data/$$d && echo "linked data/$$d -> $(LOCAL_DATA)/$$d"; fi; done

# `make lock` keeps every pin that still satisfies pyproject.toml and adds what is new; UPGRADE=all moves every
# package to its newest release, UPGRADE="trl numpy" only those. uv resolves from PyPI alone (no pip.conf
# indexes) for every platform at once (platform-only packages carry markers); torch's CPU wheel comes from
# TORCH_FIND_LINKS (a folder or a page of links) only to read its dependencies.
LOCK_PYTHON ?= 3.11
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
UPGRADE ?=
lock:  ## regenerate requirements/lock.txt from pyproject.toml with uv (UPGRADE=all, or UPGRADE="pkg ...": newer versions)
	test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q "$$(grep -Eo '^uv==[^ ]+' $(LOCK) 2>/dev/null || echo uv)"; }
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version $(LOCK_PYTHON) \
	  --generate-hashes --no-emit-package torch -c <(echo torch==$(TORCH_VERSION)+cpu) \
	  $(addprefix --find-links ,$(TORCH_FIND_LINKS)) \
	  $(if $(filter all,$(UPGRADE)),--upgrade,$(addprefix --upgrade-package ,$(UPGRADE))) \
	  --custom-compile-command 'make lock' --quiet -o $(LOCK)
	@echo "$(LOCK): $$(grep -cE '^[A-Za-z]' $(LOCK)) packages; \`make setup\` installs it (library versions are part of every code key)"

data: setup  ## fetch HH-RLHF from the hub into data/hh-rlhf (offline: link a local copy there instead)
	HF_HUB_OFFLINE=0 $(PY) -m divscale.cli data download --out data/hh-rlhf

# ---------------------------------------------------------------- the study, rebuilt by Make
# Executed notebooks are build products in runs/<recipe>/notebooks/; each is redone only when its
# notebook, the package or the recipe changed. The grid (04_finetune once per cell, via papermill)
# skips cells that are already complete, so an interrupted `make figures` resumes where it stopped.
NB_OUT := runs/$(RECIPE)/notebooks
DEPS := $(shell find divscale -name '*.py' -not -path '*/__pycache__/*') recipes/$(RECIPE).yaml $(VENV)/.installed
RESULTS := results/$(RECIPE)/runs.csv
nb = $(NB_OUT)/$(1).ipynb

$(NB_OUT)/%.ipynb: notebooks/%.ipynb notebooks/%.py $(DEPS) | setup
	$(PY) -m divscale.cli notebook run $* --recipe $(RECIPE)

# The initial policy (tiny-gpt: tokenizer + warm-up, the longest single step) is built beside 01, not after it.
POLICY := runs/$(RECIPE)/policy.txt
$(POLICY): $(DEPS) | setup
	$(PY) -m divscale.cli policy --recipe $(RECIPE) --out $@

$(RESULTS): notebooks/04_finetune.ipynb $(DEPS) $(call nb,01_data_construction) $(POLICY) | setup
	$(PY) -m divscale.cli grid --recipe $(RECIPE) -j $(JOBS)

$(call nb,05_allocation) $(call nb,06_diversity_regression) $(call nb,10_budget_planner): $(RESULTS)
$(call nb,02_prompt_diversity) $(call nb,03_reward_models): $(call nb,01_data_construction)
$(call nb,07_augmentation) $(call nb,08_selection) $(call nb,09_listwise): $(call nb,01_data_construction) $(POLICY)

FIGURE_NOTEBOOKS := 01_data_construction 02_prompt_diversity 03_reward_models 05_allocation \
  06_diversity_regression 07_augmentation 08_selection 09_listwise 10_budget_planner

results: setup $(RESULTS)  ## run the missing cells of RECIPE's grid (default cpu) into results/RECIPE/runs.csv

# the order make starts them in (-j2): 09, the longest notebook after the grid, starts beside the grid instead of
# after 07 and 08, which otherwise leaves one core idle for its last 17 minutes (cold run of 2026-12-05)
BUILD_ORDER := 01_data_construction 09_listwise 02_prompt_diversity 03_reward_models 05_allocation \
  06_diversity_regression 07_augmentation 08_selection 10_budget_planner

figures: setup $(foreach n,$(BUILD_ORDER),$(call nb,$(n)))  ## rebuild every figure of RECIPE (default cpu) into figures/RECIPE/
	$(PY) -m divscale.cli summarize --recipe $(RECIPE) $(if $(filter cpu,$(RECIPE)),--readme)
	$(PY) -m divscale.cli notebook export --recipe $(RECIPE) $(FIGURE_NOTEBOOKS)
	@echo "figures in figures/$(RECIPE)/:"; ls figures/$(RECIPE)/*.png
	@echo "executed notebooks (cleaned) in results/$(RECIPE)/notebooks/"

# JupyterLab from .venv on 127.0.0.1 (first free port from LAB_PORT), rooted at the project: the py:percent
# sources open as notebooks (jupytext, paired with their .ipynb), run in .venv's python3 kernel. Ctrl-C stops it.
LAB_PORT ?= 8888
LAB_BROWSER ?= yes
lab: setup  ## JupyterLab on the notebooks (.py sources open as paired notebooks; LAB_PORT=8888 LAB_BROWSER=no)
	$(PY) -m divscale.cli notebook lab --port $(LAB_PORT) $(if $(filter no,$(LAB_BROWSER)),--no-browser)

notebooks: setup  ## sync every notebooks/*.ipynb from its py:percent source, then check the pairs
	$(PY) -m divscale.cli notebook sync
	$(PY) -m divscale.cli notebook check

test: setup  ## run the test suite (offline)
	$(PY) -m pytest -q

test-fast: setup  ## tests without the slow (training, notebook) ones
	$(PY) -m pytest -q -m "not slow and not notebooks"

# Two builds of VERIFY_RECIPE's shared artifacts (MiniLM embeddings, RM heads, SmolLM2 generations, rankings,
# warmed-up policy) from empty caches -- one pre-warmed by a different build, one on 2 threads -- must hash alike.
VERIFY_RECIPE ?= smoke
verify: setup  ## rebuild VERIFY_RECIPE's (default smoke) shared artifacts twice from empty caches, compare hashes
	$(PY) -m divscale.cli grid --recipe $(VERIFY_RECIPE) --verify

# Two fresh clones of the current commit, each `make setup` from the lock into its own .venv, each building
# VERIFY_RECIPE's shared artifacts and grid from its own empty cache: same fingerprints, same runs.csv (run ids,
# keys, rewards) or it fails. Not part of `make test` (two installs and two builds: about half an hour here).
verify-env:  ## two fresh clones set up from the lock build VERIFY_RECIPE (default smoke) alike: fingerprints and runs.csv
	PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" LOCAL_DATA="$(abspath $(if $(wildcard data/hh-rlhf),data,$(LOCAL_DATA)))" \
	  bash requirements/verify-env.sh $(VERIFY_RECIPE)

# gpu-check on a machine without the project's venv (the pinned packages as wheels in PYTHONPATH, no network):
#   make gpu-check PY=python3 GPU_CHECK_SETUP= GPU_CHECK_JSON=$OUT/gpu-check.json   (reports/gpu_check_run.sh)
GPU_CHECK_SETUP ?= setup
GPU_CHECK_JSON ?= runs/gpu-check.json
gpu-check: $(GPU_CHECK_SETUP)  ## on one GPU, offline: rehearse the paper grid (cells, generator, RMs, prompt sharing); one JSON for `grid --plan --measured`
	HF_HUB_OFFLINE=1 USE_HUB_KERNELS=NO timeout 480 $(PY) -m divscale.tools.gpu_check --json $(GPU_CHECK_JSON)

bench: setup  ## speed/memory benchmarks (ratios against a baseline in the same run)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove build products only (not data/, not committed results or figures)
	rm -rf runs/ .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
