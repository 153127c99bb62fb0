# tritonctl: every target creates or refreshes .venv idempotently (a stamp file tracks pyproject.toml and the
# constraints).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# NVIDIA's perf_analyzer (make perf-analyzer); defined before the rules that need it (make expands prerequisites
# when it reads a rule)
PA := tools/perf_analyzer/perf_analyzer
# Development and CI install the core and every extra (pyproject.toml); users pick theirs (README: Install).
EXTRAS := dev,examples,loadtest,deploy,tune
# The versions CI passed with: every install here is constrained to them, so two machines get the same libraries
# (onnxruntime, scikit-learn, numpy ... decide the example models' bytes). `make lock` refreshes the file.
CONSTRAINTS := constraints.txt

.PHONY: venv demo demo-check test unit integration graphviz bench lint examples clean perf-analyzer mutation lock

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Refresh constraints.txt: the newest versions pyproject.toml allows, resolved in a throwaway venv (build/, ignored)
# and frozen. Each pin holds for the Python minor version it was resolved on (CI's), since some releases need a newer
# Python; on another version pip resolves freely. Run `make test` on the result before committing it.
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	pyv=$$($(LOCK_VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	{ echo "# The versions make installs (pip install -c $(CONSTRAINTS)), written by make lock on Python $$pyv: the core,"; \
	  echo "# the extras $(EXTRAS) and their dependencies. Refresh with make lock, then make test."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i '^tritonctl[= @]' | \
	  sed "s/\$$/ ; python_version == \"$$pyv\"/"; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

examples: venv
	$(BIN)/python -m examples.build
	$(BIN)/tritonctl generate tritonctl.yaml -o model_repository

# The demo retrains the examples into build/demo (git-ignored), checks their quality against the committed
# examples/artifacts, and serves the committed ones: it never rewrites a tracked file. demo-check is its build-and-check
# step alone (CI runs it, then asserts `git status --porcelain` is empty).
demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m examples.demo

demo-check: venv
	$(BIN)/python -m examples.demo --build-only

# Two tiers: tests/unit needs no server (seconds), tests/integration talks to a real embedded Triton (minutes).
# `make test` runs both, unit first, so a broken pure function fails before any server starts.
TEST := PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

# perf_analyzer too: the tune and load-test tests measure with it (without it they would skip, and CI is a clean clone).
test: venv graphviz $(PA)
	$(TEST) tests/unit
	$(TEST) tests/integration

# The fast loop fuzzes lighter: 300 hypothesis examples where the tests default to 1500 (make test, CI), which alone
# take ~25 s of CPU. TRITONCTL_FUZZ_EXAMPLES=1500 make unit fuzzes as CI does.
unit: venv graphviz
	TRITONCTL_FUZZ_EXAMPLES=$${TRITONCTL_FUZZ_EXAMPLES:-300} $(TEST) tests/unit

integration: venv $(PA)
	$(TEST) tests/integration

# graphviz's `dot` renders `tritonctl graph -o x.svg` (without it, Mermaid text instead); a unit test draws an SVG.
# Installed from Debian's packages when missing and we are root (CI is); otherwise say what to install.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends graphviz >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq --no-install-recommends graphviz >/dev/null; }; \
	  else echo "graphviz's 'dot' is missing: install graphviz (Debian: sudo apt-get install graphviz)" >&2; exit 1; fi; }

# Mutation testing of the front door's guards (auth, names, limits, bodies, protowire) against their unit tests; no
# Triton, tens of minutes on two cores, not part of `make test`. Results and method: docs/mutation.md.
mutation: venv
	$(BIN)/python tests/mutation.py --min-score 95

# NVIDIA's perf_analyzer, the yardstick for our load-test driver: the binary of the tritonclient 2.41.0 wheel with the
# libraries of nvidia-pytriton, installed into tools/perf_analyzer (git-ignored) by tools/get-perf-analyzer.sh.
$(PA): tools/get-perf-analyzer.sh | venv
	PYTHON=$(CURDIR)/$(BIN)/python bash tools/get-perf-analyzer.sh tools/perf_analyzer
perf-analyzer: $(PA)

bench: venv $(PA)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench

# ruff (rules, complexity included, and format) over the code; mypy over toolkit/ (settings: pyproject.toml).
lint: venv
	$(BIN)/ruff check toolkit tests load bench examples
	$(BIN)/ruff format --check toolkit tests load bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
