# Thin wrappers: setup creates .venv once; everything else runs inside it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test test-all bench lint data check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) -m jaxbp train

# The fast tier compiles at XLA:CPU backend level 1 with the classic emitters (tests/conftest.py);
# test-all runs both tiers with XLA's defaults (level 2), the compiler users get.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 -m "not slow"

test-all: $(STAMP)
	JAXBP_TEST_XLA_LEVEL=2 $(PY) -m pytest -q -n 2 --dist worksteal --durations=15

check: $(STAMP)
	$(PY) -m jaxbp check

bench: $(STAMP)
	$(PY) -m jaxbp bench

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxbp reference tests benchmarks
	$(VENV)/bin/ruff format --check jaxbp reference tests benchmarks

data:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "run as root, or: sudo apt-get install dataset-fashion-mnist"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
