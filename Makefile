# fastgrpo: `make train` runs the main job, `make test` the tests; each creates the venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel on a CPU machine; on a CUDA box, install your CUDA torch into the venv first (see README)
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.7.1

.PHONY: install train demo test test-gpu bench clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=69" wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(TRITON_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,train]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/fastgrpo train --config configs/default.yaml

demo: $(VENV)/.installed
	$(VENV)/bin/fastgrpo demo

test: $(VENV)/.installed
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu tests

bench: $(VENV)/.installed
	$(VENV)/bin/fastgrpo bench

clean:
	rm -rf $(VENV) build *.egg-info
