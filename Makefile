VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
STAMP := $(VENV)/.installed

.PHONY: demo test bench deps clean

# Create the virtual environment and install the project with everything the tests need.
$(STAMP): setup.cfg .ci/apt-packages.txt .ci/requirements-test.txt .ci/install-deps
	VENV=$(VENV) bash .ci/install-deps
	touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

test: $(STAMP)
	$(VENV)/bin/pytest -q -ra

bench: $(STAMP)
	$(PY) -m scripts.bench_train

clean:
	rm -rf demo-out .pytest_cache
