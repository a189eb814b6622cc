# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   # the main job on embedded data
#   make test   # the whole test suite
# Each creates the project-local virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo test exact-demo results install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,notebooks]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --durations=15 tests

exact-demo: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) -m launch.exact_demo --out=reports/exact_tv.md

# The main job: digits teacher -> Di4C student -> evaluation report in reports/demo.
demo: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) -m launch.demo --workdir=$(WORKDIR) --out_dir=reports/demo

results: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) -m benchmarks.exact_tv --out=reports/exact_tv_student.md
	JAX_PLATFORMS=cpu $(PY) -m benchmarks.train_throughput --out=reports/train_throughput.md

clean:
	rm -rf $(VENV) workdirs reports
