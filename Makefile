# tritonctl: every target creates or refreshes .venv idempotently (a stamp file tracks pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench lint examples clean perf-analyzer mutation

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[examples,dev]"
	touch $(STAMP)

examples: venv
	$(BIN)/python -m examples.build
	$(BIN)/tritonctl generate tritonctl.yaml -o model_repository

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m examples.demo

test: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests

# Mutation testing of the front door's guards (auth, names, limits, bodies, protowire) against their unit tests; no
# Triton, tens of minutes on two cores, not part of `make test`. Results and method: docs/mutation.md.
mutation: venv
	$(BIN)/python tests/mutation.py --min-score 95

# NVIDIA's perf_analyzer, the yardstick for our load-test driver (installed next to the project, git-ignored).
PA := tools/perf_analyzer/perf_analyzer
$(PA): | venv
	PYTHON=$(CURDIR)/$(BIN)/python bash ../shared/tools/get-perf-analyzer.sh tools/perf_analyzer
perf-analyzer: $(PA)

bench: venv $(PA)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check toolkit tests load bench examples
	$(BIN)/ruff format --check toolkit tests load bench examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
