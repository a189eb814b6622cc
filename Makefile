# Two commands on a fresh machine with Python >= 3.11 and pip:
#   make demo   # the main job on embedded data, on JAX's default backend (GPU/TPU if installed)
#   make test   # the whole test suite, on the CPU
# Each creates the project-local virtual environment .venv on first use, with the newest
# supported Python found: python3.12 (JAX 0.12) if it runs, else python3 (3.11: JAX 0.10).
# Choose another: `make test PYTHON=python3.13 VENV=build/venv-py3.13` (build/ is git-ignored).
ifndef PYTHON
PYTHON := $(shell for p in python3.12 python3; do \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; \
  done)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
# Extras installed into the venv; e.g. EXTRAS=test,notebooks,cuda on an NVIDIA machine.
EXTRAS ?= test,notebooks

.PHONY: demo test smoke format exact-demo results install clean

# One line saying where the tests ran (results depend on the processor: see tests/ docstrings).
define WHERE
import os, platform, jax, jaxlib
info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
cpu = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
isa = next((f for f in ("avx512f", "avx2", "avx") if f" {f} " in info), "unknown")
print(f"== Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}; {cpu}, {os.cpu_count()} cores, {platform.machine()}, widest ISA {isa}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
endef
export WHERE

$(VENV)/.installed: setup.py
	@test -n "$(PYTHON)" || { echo "no Python >= 3.11 found: run make PYTHON=/path/to/python3.11+"; exit 1; }
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mixture_dd needs Python >= 3.11, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Tests run on the CPU (8 host devices for the sharding tests) unless JAX_PLATFORMS is
# given: `JAX_PLATFORMS=cuda make test`. Only test and smoke pin the platform.
test smoke: JAX_PLATFORMS ?= cpu

# The style check, then every test, a file at a time per worker (--dist loadfile: a module's
# shared fixtures, e.g. the demo's uninterrupted run, are built once), in collection order
# (--no-loadscope-reorder: xdist would otherwise start the files with the most tests first
# and leave the long one-test files, tests/conftest.py's SLOW_FIRST, to the end).
# test_smoke.py repeats, through the launchers, what the others test piece by piece: it is
# for the second Python in CI.
test: $(VENV)/.installed
	@$(PY) -c "$$WHERE"
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .
	JAX_PLATFORMS=$(JAX_PLATFORMS) $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests --ignore=tests/test_smoke.py

# The package imports, and launch.train -> launch.distill -> launch.sample run (about a minute).
smoke: $(VENV)/.installed
	@$(PY) -c "$$WHERE"
	JAX_PLATFORMS=$(JAX_PLATFORMS) $(PY) -m pytest -q tests/test_smoke.py

# Applies the one style (ruff.toml) to the whole tree.
format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

exact-demo: $(VENV)/.installed
	$(PY) -m launch.exact_demo --out=reports/exact_tv.md

# The main job: digits teacher -> Di4C student -> evaluation report in reports/demo.
demo: $(VENV)/.installed
	$(PY) -m launch.demo --workdir=$(WORKDIR) --out_dir=reports/demo

results: $(VENV)/.installed
	$(PY) -m benchmarks.exact_tv --out=reports/exact_tv_student.md
	$(PY) -m benchmarks.train_throughput --out=reports/train_throughput.md

clean:
	rm -rf $(VENV) build/venv-py* workdirs reports
