# Every install step lives here and in pyproject.toml: `make demo` and `make test` work on a fresh
# clone on a bare machine (Python >= 3.11 and a C++ compiler).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The native extension is rebuilt whenever its sources or the build description change.
# What the native build needs in the venv (the install runs without build isolation).
BUILD_DEPS := "scikit-build-core>=0.10" "nanobind>=2.4" "onednn-devel-cpu-gomp==2023.2.0"
NATIVE_SRC := pyproject.toml CMakeLists.txt $(wildcard src/ember/kernels/cpu/csrc/*)

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Install: ember and its benchmark peers (onnxruntime, openvino), which the demo compares against.
$(VENV)/.installed: $(BIN)/python $(NATIVE_SRC)
	$(BIN)/pip install --quiet $(BUILD_DEPS)
	$(BIN)/pip install --quiet --no-build-isolation --editable ".[bench]"
	touch $@

# Test install: the dev tools, the CPU build of torch and the models the tests use.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet $(BUILD_DEPS)
	$(BIN)/pip install --quiet --no-build-isolation --editable ".[dev,zoo,torch,test,bench,serve,ray]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/python -m ember.demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/mypy

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
