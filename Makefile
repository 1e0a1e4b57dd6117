# `make demo` and `make test` create (or reuse) a local virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; a plain `torch` may pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-all bench clean

$(BIN)/metatokens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/metatokens

# The main job: pre-train the tiny Meta+RoPE model on the built-in corpus (no downloads).
demo: venv
	$(BIN)/metatokens pretrain --config tiny --out runs/tiny
	$(BIN)/metatokens plot runs/tiny --out runs/tiny/loss.png

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs .cache .pytest_cache
