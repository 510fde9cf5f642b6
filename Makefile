VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
STAMP := $(VENV)/.installed

RVENV ?= .venv-numpy1
RSTAMP := $(RVENV)/.installed
# Tests of the line-side runtime (no training in-process; bundles come from the full venv).
RUNTIME_TESTS := tests/test_metrics.py tests/test_run.py tests/test_records.py tests/test_deploy.py \
	tests/test_liveview.py tests/test_trt_engine.py tests/test_sources.py tests/test_operating_point.py \
	tests/test_architecture.py

.PHONY: demo test test-runtime pyversion bench bench-line bench-precision operating-point bench-faults bench-view deps clean

# Create the virtual environment and install the project with everything the tests need.
$(STAMP): setup.cfg .ci/apt-packages.txt .ci/requirements-test.txt .ci/constraints.txt .ci/install-deps
	VENV=$(VENV) bash .ci/install-deps
	touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

test: $(STAMP) pyversion test-runtime
	$(VENV)/bin/pytest -q -ra

# edge/ must run on JetPack 6's Python 3.10, which does not install here: checked statically.
pyversion: $(STAMP)
	$(VENV)/bin/vermin -t=3.10- --no-tips --violations --eval-annotations edge/

# The runtime tests again with numpy 1.x (JetPack keeps it), in a second virtual environment.
$(RSTAMP): .ci/requirements-runtime.txt setup.cfg
	[ -x "$(RVENV)/bin/python" ] || python3 -m venv $(RVENV)
	$(RVENV)/bin/pip install -q -r .ci/requirements-runtime.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(RVENV)/bin/pip install -q --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	touch $(RSTAMP)

test-runtime: $(STAMP) $(RSTAMP)
	EDGE_TRAIN_PYTHON=$(abspath $(PY)) $(RVENV)/bin/pytest -q -ra -p no:cacheprovider $(RUNTIME_TESTS)

# Figures that depend on the machine: printed, and kept in bench-out/ (JSON and plots).
bench: $(STAMP)
	mkdir -p bench-out
	$(PY) -m scripts.bench_train --json bench-out/train.json
	$(PY) -m scripts.bench_runtime
	$(PY) -m scripts.bench_cameras

bench-line: $(STAMP)
	$(PY) -m scripts.bench_line

bench-precision: $(STAMP)
	$(PY) -m scripts.bench_precision

# Faults and bad inputs against a real `edge run` (a 2 MB tmpfs for the full disk: root only).
bench-faults: $(STAMP)
	$(PY) -m scripts.bench_faults

# Recall and false-reject rate at the trained threshold vs chosen with hindsight (PIPED, bsdata).
operating-point: $(STAMP)
	$(PY) -m scripts.operating_point

bench-view: $(STAMP)
	$(PY) -m scripts.bench_view

clean:
	rm -rf demo-out bench-out .pytest_cache $(RVENV)
