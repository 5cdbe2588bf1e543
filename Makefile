# miras_jax developer commands. `make test` is the README's test command and what CI runs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow lint format contract bench bench-peer docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The README's main job: a small Titans LMM model learns MQAR on the CPU, offline, in minutes.
# Resumes from runs/mqar if it holds a checkpoint (rm -rf runs/mqar to start over).
TRAIN_ARGS ?=
train: $(STAMP)
	$(BIN)/python -m experiments.train --config=configs/mqar.py --workdir=runs/mqar $(TRAIN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal

test-slow: $(STAMP)
	MIRAS_TEST_OPTIMIZED=1 $(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m experiments.bench_memory --suite=default

# The peer comparison of docs/benchmarks.md: installs torch 2.13 (CPU) and titans-pytorch into .venv
# (never a test dependency) and runs both sides with the same glibc malloc setting.
PEER_MALLOC := MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=1073741824
bench-peer: $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0 titans-pytorch
	$(PEER_MALLOC) $(BIN)/python -m experiments.bench_peer_titans_pytorch

# The documentation site (mkdocs.yml) in strict mode: a broken link, page or API reference fails.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

contract: $(STAMP)
	$(BIN)/python ../shared/tools/contract_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
