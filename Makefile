# Two entry points (README): `make demo` runs the main job, `make test` runs the test suite.
# Each creates .venv if needed and installs what it needs, torch pinned first and held by a constraint so that no
# later requirement replaces it. From the default index, torch on Linux x86_64 is the CUDA build (several GB of
# nvidia-* wheels); without a GPU take PyTorch's CPU wheels instead:
#     make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (TORCH_INDEX matters when .venv is created: `rm -rf .venv` to switch.)
# `make test-compat` runs the suite on every Transformers release the package allows and each extra, in venvs of its
# own under .venv-compat/, and writes docs/compatibility.md (scripts/compat_matrix.py). Narrow it with
# COMPAT_RELEASES=5.17,5.25 and COMPAT_EXTRAS=none|lmms-eval,...; COMPAT_ARGS=--resume continues an interrupted run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
COMPAT_ARGS ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[test]"
	touch $@

.PHONY: demo test test-compat
demo: $(VENV)/.installed
	$(PY) -m deepstack_hf.testing_utils.demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-compat:
	$(PYTHON) scripts/compat_matrix.py --torch-version "$(TORCH_VERSION)" --torch-index "$(TORCH_INDEX)" $(COMPAT_ARGS)
