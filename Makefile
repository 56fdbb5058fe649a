# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast install kernels browser clean reproduce-detector update-lock

# requirements.lock pins every package at the version CI tested (`make update-lock` regenerates it);
# setup.py keeps loose floors for library users. Constraints only pin: nothing outside the extras is added.
LOCK := requirements.lock
EXTRAS := dev,onednn,serve

$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The newest versions setup.py allows, installed into a throwaway venv and frozen.
update-lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	{ echo "# Versions tested by CI: make installs with -c $(LOCK). Regenerate with make update-lock."; \
	  echo "# Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -sm)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^jaxface'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf .lock-venv

# Optional native convolution (jaxface/kernels/onednn.py): built when missing or its source changed;
# without a compiler or oneDNN it says so and everything runs on XLA's convolution.
kernels: $(STAMP)
	$(PY) -m jaxface.kernels.onednn build

install: kernels

demo: kernels
	$(PY) -m jaxface demo --workdir=$(WORKDIR)

# The browser test (tests/test_serve_e2e.py) drives the system chromium through Playwright (never
# `playwright install`: no browser downloads). Installs Debian's chromium when missing and apt-get can
# run (root, or sudo without a password); otherwise it says so and that test skips.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "browser: no chromium and no apt-get; the browser test will skip"; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "browser: apt-get install chromium failed; the browser test will skip"; \
	elif sudo -n true 2>/dev/null; then (sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null) \
	  || echo "browser: apt-get install chromium failed; the browser test will skip"; \
	else echo "browser: chromium missing and apt-get needs root; the browser test will skip"; fi

# Two pytest-xdist workers: one process alone keeps about 1.3 of two cores busy (XLA compiles on one
# thread), two keep both busy. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: kernels browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=20 tests

# The unmarked tests only (no subprocess/end-to-end, real-data or oneDNN tests): a quick check while editing.
test-fast: kernels
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not shared_data and not onednn" tests

# Retrains the detector shipped in jaxface/assets/detectors/faces_wild from its config and seed (about
# 10 minutes on 2 cores) and checks that the weights come out identical.
DATA_ROOT ?= ../shared/data/realfake
reproduce-detector: kernels
	$(PY) -m jaxface.experiments.reproduce --data_root=$(DATA_ROOT) --workdir=runs/reproduce_faces_wild

clean:
	rm -rf $(VENV) runs .lock-venv
