# Two entry points for a new user: `make demo` and `make test`.
# Both create .venv if missing (with --system-site-packages so JetPack's system TensorRT
# stays visible on a Jetson), install the package into it, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-changenet-trt

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/changenet-trt demo

lint: $(STAMP)
	$(BIN)/ruff check changenet_trt tests benchmarks
	$(BIN)/vermin --target=3.8- --violations --no-tips --eval-annotations changenet_trt

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
