# voice2face: `make help` lists the targets. Every target that needs the environment installs it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KIMG ?= 6                 # training budget (thousands of images) of each sweep run (ablations, table2, frontends)
SEEDS ?= 0                # seeds of each sweep row, e.g. SEEDS="0 1 2" (mean ± sd in the table)
BASE ?= baseline          # the experiment the ablations and front ends change; baseline_cpu for the CPU size
SWEEP_ARGS ?=             # more experiments.sweep overrides, e.g. "run_args=['data.num_workers=4']"
EXP ?= prior_cpu          # the main job: the paper's method on the shipped face prior (docs/face_prior.md);
                          # baseline_cpu: a G trained from scratch at 32 px (what a user without a pretrained G runs)
PRIOR_ARGS ?=             # experiments.face_prior overrides, e.g. "total_kimg=400 init=face_prior_64" (continue the shipped one)
PROBE_ARGS ?=             # experiments.face_probe overrides, e.g. "threads=1"
TARGETS_ARGS ?=           # experiments.latent_targets overrides, e.g. "steps=1000"
BOUND_ARGS ?=             # experiments.voice_bound overrides, e.g. "split=val", "data.corpus.seed=4242" or "through=face_prior_64"
RUN_ARGS ?=
DEMO_ARGS ?=              # experiments.demo overrides, e.g. "ckpt=my-folder/ port=7861"
TEST_ARGS ?=
export OMP_NUM_THREADS ?= 2

.PHONY: help install run demo face-prior voice-prior face-probe latent-targets voice-bound sums test test-unit test-full ablations table2 frontends recipe bench gpu-check lint clean

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

run: install  ## the paper's method on the face prior: train + evaluate on the embedded corpus (<= 15 min, 2 cores)
	$(PY) -m experiments.run +exp=$(strip $(EXP)) $(RUN_ARGS)

demo: install  ## the browser demo (Gradio, 127.0.0.1:7860) on the newest make-run checkpoint: experiments/demo.py
	$(PY) -m pip install -q -e '.[demo]'
	@ckpt=$$(ls -t outputs/*/*/checkpoints/last.ckpt 2>/dev/null | head -1); \
	if [ -z "$$ckpt" ]; then echo "no trained model here yet: run 'make run' first (or python -m experiments.demo ckpt=PATH)"; exit 1; fi; \
	echo "model: $$ckpt"; $(PY) -m experiments.demo ckpt=$$ckpt $(DEMO_ARGS)

face-prior: install  ## train the face prior from scratch (hours on 2 cores; resumes), then ship it: docs/face_prior.md
	$(PY) -m experiments.face_prior $(PRIOR_ARGS)
	cp outputs/face_prior/face_prior.pt lightning_modules/weights/face_prior_64.pt
	$(MAKE) sums

voice-prior: install  ## train the voice prior from scratch (about 10 min on 2 cores), then ship it: docs/voice_prior.md
	rm -rf outputs/voice_prior  # this target's own run folder: a run refuses a folder that holds an earlier one
	$(PY) -m experiments.run +exp=voice_prior hydra.run.dir=outputs/voice_prior $(VOICE_ARGS)
	cp outputs/voice_prior/encoder.safetensors lightning_modules/weights/voice_prior_128.safetensors
	$(MAKE) sums

face-probe: install  ## train the evaluations' face probe on the corpus' train split (a minute), then ship it
	$(PY) -m experiments.face_probe $(PROBE_ARGS)
	cp outputs/face_probe/face_probe_32.safetensors lightning_modules/weights/face_probe_32.safetensors
	$(MAKE) sums

latent-targets: install  ## project the corpus' train faces into the shipped prior (about 25 min), then ship them
	$(PY) -m experiments.latent_targets $(TARGETS_ARGS)
	cp outputs/latent_targets/face_prior_64_targets.safetensors lightning_modules/weights/
	$(MAKE) sums

voice-bound: install  ## what an ideal voice-to-face model scores on the test split (twins of the speakers; 4 min)
	$(PY) -m experiments.voice_bound $(BOUND_ARGS)

sums:  ## record the SHA-256 of the shipped weight files (lightning_modules/weights/SHA256SUMS)
	cd lightning_modules/weights && sha256sum face_prior_64.pt face_probe_32.safetensors face_prior_64_targets.safetensors voice_prior_128.safetensors > SHA256SUMS

test: install  ## the CI test set (slow tests excluded)
	$(PY) -m pytest -m "not slow" -q $(TEST_ARGS)

test-unit: install  ## the fast unit subset: no integration or slow tests (under 3 minutes)
	$(PY) -m pytest -m "not slow and not integration" -q $(TEST_ARGS)

test-full: install  ## every test, slow ones included
	$(PY) -m pytest -q $(TEST_ARGS)

ablations: install  ## baseline / no-SE / ReLU of BASE at KIMG over SEEDS, then the table (paper Table 3)
	$(call sweep,ablations)

table2: install  ## DCGAN / StyleGAN / StyleGAN2 at the paper's size, KIMG, SEEDS, then the table (paper Table 2)
	$(call sweep,table2)

frontends: install  ## log-mel against MFCC + deltas on BASE at KIMG over SEEDS, then the table
	$(call sweep,frontends)

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
empty :=
space := $(empty) $(empty)
# $(1): the sweep of experiments/conf/sweep.yaml; runs in outputs/$(1)/<row>/seed<N>, table in outputs/$(1)/table.md
define sweep
	$(PY) -m experiments.sweep name=$(1) "seeds=[$(subst $(space),$(comma),$(strip $(SEEDS)))]" kimg=$(strip $(KIMG)) \
	  base=$(strip $(BASE)) $(SWEEP_ARGS)
endef
