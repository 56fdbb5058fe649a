# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast install kernels clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,onednn]'
	touch $(STAMP)

# Optional native convolution (jaxface/kernels/onednn.py): built when missing or its source changed;
# without a compiler or oneDNN it says so and everything runs on XLA's convolution.
kernels: $(STAMP)
	$(PY) -m jaxface.kernels.onednn build

install: kernels

demo: kernels
	$(PY) -m jaxface demo --workdir=$(WORKDIR)

test: kernels
	$(PY) -m pytest -q tests

# The unmarked tests only (no subprocess/end-to-end, real-data or oneDNN tests): a quick check while editing.
test-fast: kernels
	$(PY) -m pytest -q -m "not slow and not shared_data and not onednn" tests

clean:
	rm -rf $(VENV) runs
