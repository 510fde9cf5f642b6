VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-line bench-precision deps clean

# Create the virtual environment and install the project with everything the tests need.
$(STAMP): setup.cfg .ci/apt-packages.txt .ci/requirements-test.txt .ci/constraints.txt .ci/install-deps
	VENV=$(VENV) bash .ci/install-deps
	touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

test: $(STAMP)
	$(VENV)/bin/pytest -q -ra

# Figures that depend on the machine: printed, and kept in bench-out/ (JSON and plots).
bench: $(STAMP)
	mkdir -p bench-out
	$(PY) -m scripts.bench_train --json bench-out/train.json
	$(PY) -m scripts.bench_runtime

bench-line: $(STAMP)
	$(PY) -m scripts.bench_line

bench-precision: $(STAMP)
	$(PY) -m scripts.bench_precision

clean:
	rm -rf demo-out bench-out .pytest_cache
