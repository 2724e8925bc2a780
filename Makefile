# voice2face: `make help` lists the targets. Every target that needs the environment installs it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KIMG ?= 6                 # training budget (thousands of images) for ablations / table2
SEED ?= 0
EXP ?= baseline_cpu       # the main job's experiment (baseline at CPU width); EXP=baseline for the paper's width
RUN_ARGS ?=
TEST_ARGS ?=
export OMP_NUM_THREADS ?= 2

.PHONY: help install run test test-full ablations table2 recipe bench gpu-check lint clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install voice2face with its dev tools (idempotent)

# torch/torchvision/torchaudio first, pinned to a matching trio; facenet-pytorch pins torch<2.3, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

run: install  ## train + evaluate the baseline on the embedded corpus (CPU width, <= 15 min on 2 cores)
	$(PY) -m experiments.run +exp=$(strip $(EXP)) $(RUN_ARGS)

test: install  ## the CI test set (slow tests excluded)
	$(PY) -m pytest -m "not slow" -q $(TEST_ARGS)

test-full: install  ## every test, slow ones included
	$(PY) -m pytest -q $(TEST_ARGS)

ablations: install  ## baseline / no-SE / ReLU at KIMG, then the ablation table (paper Table 3)
	$(call sweep,ablations,baseline nose relu,BaseModel$(comma)NoSE$(comma)ReLU)

table2: install  ## DCGAN / StyleGAN / StyleGAN2 at KIMG, then the comparison table (paper Table 2)
	$(call sweep,table2,dcgan stylegan baseline,DCGAN$(comma)StyleGAN$(comma)StyleGAN2)

recipe: install  ## the recipe study of docs/recipe.md (about 2 h on 2 cores): variants, table, curves
	$(PY) -m experiments.recipe $(RUN_ARGS)

bench: install  ## every benchmark in bench/ (each prints a table of ratios)
	for b in $(filter-out bench/gpu_report.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

gpu-check: install  ## on a GPU machine: kernels, training step and a 1-kimg run in ~6 min (outputs/gpu_check)
	PY=$(PY) bash bench/gpu_check.sh outputs/gpu_check

lint: install  ## ruff: lint rules and formatting (120 columns); `ruff format .` fixes the latter
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:  ## remove caches and run folders (keeps .venv)
	rm -rf outputs .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

comma := ,
# $(1): sweep name, $(2): experiments, $(3): their row labels. Each run writes to outputs/$(1)/<exp>; the report reads them all.
define sweep
	set -e; runs=""; for e in $(2); do \
	  $(PY) -m experiments.run +exp=$$e model.total_kimg=$(strip $(KIMG)) seed=$(SEED) \
	    hydra.run.dir=outputs/$(1)/$$e task_name=$$e $(RUN_ARGS); \
	  runs="$$runs,outputs/$(1)/$$e"; done; \
	$(PY) -m experiments.report "runs=[$${runs#,}]" "labels=[$(3)]" out=outputs/$(1)/table.md
endef
