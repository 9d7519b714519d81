# Set-up and checks. Every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test install bench clean

$(STAMP): setup.py requirements-dev.txt $(wildcard pyexplain/csrc/*) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## demo: explain skimage's "chelsea" photo with LPR (50 iterations, ~15 s on 2 idle cores) on the embedded EfficientNet-Lite0; writes $(OUT)/
demo: $(STAMP)
	$(BIN)/pyexplain explain builtin:chelsea --method lpr --out $(OUT)

## test: the whole test suite (with a C++ compiler present, the fused kernels must have been built)
test: $(STAMP)
	PYEXPLAIN_EXPECT_EXTENSION=$$(command -v $${CXX:-c++} >/dev/null && echo 1) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build *.egg-info $(OUT) pyexplain/_C*.so
