# safe-rlhf: every set-up step is here. `make help` lists the targets.
#
# The install pins torch to the CPU wheel this project's machines carry (an unpinned torch pulls a multi-GB CUDA
# build). On a GPU cluster, install the CUDA torch you want first and skip the pin:
#     make install TORCH_SPEC=            (keeps the torch already in .venv)
#     make install TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
PYTEST_ARGS ?=
# Two ranks on two cores oversubscribe without this (3-4x slower steps).
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_SILENT ?= true

.PHONY: help install demo demo-dpo demo-vision demo-seeds test test-all test-slow lint shellcheck format bench gpu-check gpu-check-dry clean assets toyworld

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PY) -m pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)")
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m safe_rlhf.prebuild
	touch $@

install: $(VENV)/.installed  ## create .venv (if missing) and install safe-rlhf with its dev tools

DEMO_DIR ?= runs/demo
demo: install  ## the whole pipeline on the toy world (SFT, reward/cost models, PPO, PPO-Lag, reward shaping, arena, report)
	$(PY) -m safe_rlhf.pipeline output_dir=$(DEMO_DIR)

demo-dpo: install  ## the demo plus DPO on better pairs, DPO on safer pairs and SafeDPO, in the same arena (~9 min)
	$(PY) -m safe_rlhf.pipeline output_dir=runs/demo-dpo \
		'stages=[sft,reward_model,cost_model,ppo,ppo_lag,ppo_reward_shaping,dpo_better,dpo_safer,safe_dpo,arena,length_bias,report]'

demo-vision: install  ## Safe RLHF-V on the multimodal toy world: tiny VLM, SFT, reward/cost models, PPO, PPO-Lag, arena, image-swap control
	$(PY) -m safe_rlhf.pipeline --config-name pipeline_vision

demo-seeds: install  ## the pipeline over 5 training seeds with a 5-lambda shaping sweep, mean and spread per policy (~40 min)
	$(PY) -m safe_rlhf.pipeline output_dir=runs/demo-seeds 'seeds=[1,2,3,4,5]' 'shaping_lambdas=[0.1,0.25,0.5,1.0,2.0]'

test: install  ## the suite CI runs: everything except the slow and gpu tiers
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install  ## the slow tier (long CPU runs)
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all: install  ## every tier (gpu tests skip without CUDA)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install  ## ruff (with annotation rules) and mypy on safe_rlhf/; shellcheck on launch/ when it is installed
	$(VENV)/bin/ruff check safe_rlhf tests
	$(VENV)/bin/ruff format --check safe_rlhf tests
	$(VENV)/bin/mypy safe_rlhf
	@if command -v shellcheck >/dev/null 2>&1; then $(MAKE) --no-print-directory shellcheck; \
	else echo "lint: shellcheck not installed, launch scripts not checked (CI checks them: .ci/run)"; fi

LAUNCH_SCRIPTS := $(wildcard launch/*.sh) launch/slurm.sbatch
shellcheck:  ## shellcheck the launch scripts (apt-get install shellcheck); CI runs it
	shellcheck -x $(LAUNCH_SCRIPTS)

format: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix safe_rlhf tests
	$(VENV)/bin/ruff format safe_rlhf tests

bench: install  ## PPO-Lagrangian iterations on the tiny-ppo workload: 1 process ZeRO-0, 2 processes ZeRO-3 (gathered / layerwise)
	$(PY) -m safe_rlhf.bench --json runs/bench.json

assets: install  ## build the tiny tokenizer + model into runs/assets/tiny-llama (the default configs build their own cache)
	$(PY) -m safe_rlhf.assets --output runs/assets/tiny-llama

gpu-check: install  ## on a GPU: SFT + PPO-Lag + DPO, random 0.5B Llama, bf16, ZeRO-3: tokens/s, TFLOP/s, memory (<8 min, H200)
	$(PY) -m safe_rlhf.gpu_check --json runs/gpu-check.json

gpu-check-dry: install  ## the GPU check's stages on CPU with a tiny fp32 model (~1 min): proves it runs before a GPU is lent
	$(PY) -m safe_rlhf.gpu_check --dry-run --json runs/gpu-check-dry.json

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf runs outputs multirun .pytest_cache .mypy_cache .ruff_cache
