# `make demo` and `make test` create (or reuse) a local virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; a plain `torch` may pull a multi-GB CUDA build. The venv gets the test extra and eval
# (lm-evaluation-harness, pinned in pyproject.toml), which tests/integration/test_lm_eval_harness.py runs.
TORCH ?= torch==2.13.0

.PHONY: venv demo pretrain-tiny test test-fast test-all clean

$(BIN)/metatokens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,eval]"
	touch $@

venv: $(BIN)/metatokens

# The main job: the meta-token effect in minutes, two models from scratch on the built-in corpus (no downloads) -> report/REPORT.md.
demo: venv
	$(BIN)/metatokens reproduce --scale demo --out report

# Pre-train the tiny Meta+RoPE model alone (about 5-6 minutes on 2 idle cores); a run already in
# runs/tiny (the README's `metatokens pretrain --config tiny --out runs/tiny`) is continued, not refused.
pretrain-tiny: venv
	if [ -f runs/tiny/checkpoints/LATEST ]; then \
		$(BIN)/metatokens pretrain --out runs/tiny --resume; \
	else \
		$(BIN)/metatokens pretrain --config tiny --out runs/tiny; \
	fi
	$(BIN)/metatokens plot runs/tiny   # -> runs/tiny/loss.png

# Both layers, unit then integration (pyproject's testpaths), without the tests marked slow.
test: venv
	$(BIN)/python -m pytest -q

# The unit layer alone: no training step, no subprocess, no study (about 70 s on 2 idle cores).
test-fast: venv
	$(BIN)/python -m pytest -q tests/unit

# Both layers and the tests marked slow.
test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

# What the commands above and the README's examples write (runs/, report/, the token cache); nothing else.
clean:
	rm -rf runs report .cache .pytest_cache
