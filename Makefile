# fastgrpo: `make train` runs the main job, `make test` the tests; each creates the venv when missing.
# Versions come from requirements/lock.txt (tested); `make test LOCK=` installs the newest releases instead
# (in a new venv: `make clean` first). `make lock` refreshes the lock from pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/lock.txt
# CPU wheel on a CPU machine; on a CUDA box, install your CUDA torch into the venv first (see README)
TORCH_SPEC ?= torch==2.13.0
# `make test` runs the tests in this many pytest-xdist workers (one per core, at most 4; 0: in pytest's own process)
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))")
# `make train ARGS="iterations=80 out_dir=runs/long"`: config overrides for the main job
ARGS ?=
# `make lock` writes here
LOCK_OUT ?= requirements/lock.txt
# where `make lock` finds the CPU torch wheel it resolves against (a folder, or https://download.pytorch.org/whl/cpu)
TORCH_WHEELS ?= /opt/wheels
CONSTRAINTS := $(if $(strip $(LOCK)),-c $(LOCK),)

.PHONY: install train demo test test-gpu test-slow bench lock clean

$(VENV)/.installed: pyproject.toml setup.py $(strip $(LOCK))
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(CONSTRAINTS) "setuptools>=77" wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(CONSTRAINTS) --no-build-isolation -e ".[test,train]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/fastgrpo train $(ARGS)

demo: $(VENV)/.installed
	$(VENV)/bin/fastgrpo demo

test: $(VENV)/.installed
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu tests

test-slow: $(VENV)/.installed
	FASTGRPO_SLOW=1 TRITON_INTERPRET=1 $(PY) -m pytest -q -m slow tests

bench: $(VENV)/.installed
	$(VENV)/bin/fastgrpo bench

lock:
	test -x .venv-lock/bin/uv || (python3 -m venv .venv-lock && .venv-lock/bin/pip install -q uv)
	.venv-lock/bin/uv pip compile pyproject.toml requirements/build.in --all-extras --python-version 3.11 \
		--find-links $(TORCH_WHEELS) --override requirements/overrides.txt --no-emit-package torch \
		--custom-compile-command "make lock" -o $(LOCK_OUT)

clean:
	rm -rf $(VENV) build *.egg-info
