# Thin wrappers: the venv is created once; each target installs only what its job needs.
#   train, check, bench: the runtime set (`pip install -e .`: jax, optax, numpy, scikit-learn,
#                        matplotlib, tqdm, dp-accounting)
#   test, test-all, lint: the runtime set plus the dev tools (`pip install -e ".[dev]"`: pytest,
#                        hypothesis, ruff, and equinox/flax for the interop tests)
# Each set has its own stamp; both are redone when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: setup train test test-all bench lint data check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV)

setup: $(DEV)

train: $(RUNTIME)
	$(PY) -m jaxbp train
	@echo ''
	@echo 'Next: `source .venv/bin/activate` (or call .venv/bin/jaxbp), then for instance'
	@echo '  jaxbp train --plot flow.png                           the curves and the gradient flow per level'
	@echo '  jaxbp train --rule fa --activation tanh --lr 0.01     feedback alignment: its angle to backprop per epoch'
	@echo '  jaxbp train --dp-clip 1 --dp-noise 1.1                private training (DP-SGD), epsilon per epoch'
	@echo '  jaxbp check --layer Dense                             a backward checked against JAX autodiff'
	@echo '  jaxbp train --help                                    every flag, with each preset'"'"'s defaults'
	@echo 'and the quantities (per-example gradients, curvature): docs/quantities.md'

# The fast tier compiles at XLA:CPU backend level 1 with the classic emitters (tests/conftest.py);
# test-all runs both tiers with XLA's defaults (level 2), the compiler users get.
test: $(DEV)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 -m "not slow"

test-all: $(DEV)
	JAXBP_TEST_XLA_LEVEL=2 $(PY) -m pytest -q -n 2 --dist worksteal --durations=15

check: $(RUNTIME)
	$(PY) -m jaxbp check

bench: $(RUNTIME)
	$(PY) -m jaxbp bench

lint: $(DEV)
	$(VENV)/bin/ruff check jaxbp reference tests benchmarks
	$(VENV)/bin/ruff format --check jaxbp reference tests benchmarks

data:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "run as root, or: sudo apt-get install dataset-fashion-mnist"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
